"""Bytes to text with the encoding detected, not assumed (UTF-8, BOM, GB18030/GBK, others), and JSON Lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from charset_normalizer import from_bytes

from prep.errors import PrepError

_BINARY_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (an XLSX workbook?)",
    b"\xd0\xcf\x11\xe0": "an OLE file (an XLS workbook?)",
    b"\x1f\x8b": "a gzip archive",
}


def read_text_file(path: Path) -> str:
    """Decode a text file (UTF-8 with or without BOM, then GB18030 or Big5 where the result is plausible Chinese,
    then detection); CRLF becomes LF. A file that is UTF-8 but for some lines is refused."""
    return _detect(path).replace("\r\n", "\n")


def read_input(path: Path, what: str) -> str:
    """``read_text_file`` for a file the user named: a missing file, a folder or an unreadable file is one sentence
    that starts with ``what`` (the option, or what the file should hold)."""
    try:
        return read_text_file(path)
    except FileNotFoundError:
        raise PrepError(f"{what} {path}: no such file.") from None
    except IsADirectoryError:
        raise PrepError(f"{what} {path}: is a folder; expected a file.") from None
    except PermissionError:
        raise PrepError(f"{what} {path}: not readable (permission denied).") from None


def lines_of(text: str) -> list[str]:
    """The lines of a JSON Lines text. At line breaks only: str.splitlines() also breaks at U+2028, U+2029 and
    U+0085, which json.dumps(ensure_ascii=False) and orjson leave unescaped inside strings, so one record would
    become two malformed halves."""
    return re.split(r"\r\n|\r|\n", text)


def json_array(text: str) -> list | None:
    """The text as one JSON array, when it is one (a ``json.dump`` saved as .jsonl, which LLaMA-Factory's loader
    reads as the array); None for JSON Lines."""
    if not text.lstrip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, list) else None


def json_lines(path: Path, what: str) -> Iterator[tuple[int, object]]:
    """(line number, value) for each non-blank line of a JSON Lines file the user named; the value is the
    ``json.JSONDecodeError`` for a malformed line, for the caller to refuse or skip."""
    for number, line in enumerate(lines_of(read_input(path, what)), start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, err


def _detect(path: Path) -> str:
    data = Path(path).read_bytes()
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise PrepError(f"{path}: this is {what}, not a text file; expected UTF-8 or GBK text.")
    if data.startswith(b"\xef\xbb\xbf"):
        return _decode(path, data, "utf-8-sig")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _decode(path, data, "utf-16")
    utf8 = _strict(data, "utf-8")
    if utf8 is not None and "\x00" not in utf8:
        return utf8
    if utf8 is None:
        _refuse_mixed_utf8(path, data)
    elif utf8.count("\x00") * 10 < len(data):  # a few NULs in UTF-8 text (UTF-16 without a BOM is a NUL every other byte)
        _refuse_nul(path, utf8)
    # GB18030 decodes almost any bytes, so Big5 comes out as mojibake (~half private-use characters). Big5 is
    # taken only when GB18030's result is implausible and Big5's is less so: Big5 also decodes most GBK bytes.
    gb = _strict(data, "gb18030")
    if gb is not None and "\x00" not in gb and _unlikely_share(gb) <= MAX_UNLIKELY_SHARE:
        return gb
    candidates = [text for text in (gb, _strict(data, "big5")) if text is not None and "\x00" not in text]
    if candidates:
        return min(candidates, key=_unlikely_share)
    best = from_bytes(data).best()
    if utf8 is not None and (best is None or "\x00" in str(best)):
        _refuse_nul(path, utf8)
    if best is None or "\x00" in str(best):
        raise PrepError(f"{path}: cannot decode the bytes as text; expected UTF-8, UTF-8 with BOM or GBK/GB18030.")
    return str(best)


def _refuse_nul(path: Path, text: str) -> None:
    """UTF-8 text but for NUL bytes (a file cut by a crash, a binary pasted in): name the first one's line."""
    raise PrepError(f"{path}: line {text.count(chr(10), 0, text.index(chr(0))) + 1} holds a NUL byte ({text.count(chr(0))} in the "
                    "file); expected text without NUL bytes (remove them, or save the file again from its editor).")


# Characters a wrong double-byte decoding produces in bulk: private use, Cyrillic, Greek, kana, bopomofo.
# Big5 read as GB18030: 42-67% of the non-ASCII characters; GBK text quoting a Cronbach's α: a few percent.
_UNLIKELY = re.compile(r"[\ue000-\uf8ff\u0370-\u03ff\u0400-\u04ff\u3040-\u30ff\u3100-\u312f]")
MAX_UNLIKELY_SHARE = 0.2


def _strict(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def _unlikely_share(text: str) -> float:
    """The share of the non-ASCII characters of ``text`` that a wrong decoding would explain better."""
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return len(_UNLIKELY.findall(text)) / non_ascii if non_ascii else 0.0


def _refuse_mixed_utf8(path: Path, data: bytes) -> None:
    """A file whose non-ASCII lines are mostly UTF-8 but not all (rows pasted from a GBK file) would decode as
    GB18030 mojibake: stop and name the first line that is not UTF-8."""
    lines = data.split(b"\n")
    utf8 = [_strict(line, "utf-8") is not None for line in lines]
    non_ascii_utf8 = sum(ok and not line.isascii() for ok, line in zip(utf8, lines))
    foreign = [number for number, ok in enumerate(utf8, start=1) if not ok]
    if non_ascii_utf8 > len(foreign):
        raise PrepError(f"{path}: line {foreign[0]} is not UTF-8 although most lines are ({len(foreign)} {'line is' if len(foreign) == 1 else 'lines are'} not); "
                        "expected one encoding for the whole file (save it again as UTF-8).")


def _decode(path: Path, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise PrepError(f"{path}: invalid {encoding} at byte {err.start}; expected a consistently encoded text file.") from None
