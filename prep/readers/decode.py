"""Bytes to text with the encoding detected, not assumed (UTF-8, BOM, GB18030/GBK, others)."""

from __future__ import annotations

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
    """Decode a text file (UTF-8 with or without BOM, then GB18030, then detection); CRLF becomes LF."""
    return _detect(path).replace("\r\n", "\n")


def _detect(path: Path) -> str:
    data = Path(path).read_bytes()
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise PrepError(f"{path}: this is {what}, not a text file; expected UTF-8 or GBK text.")
    if data.startswith(b"\xef\xbb\xbf"):
        return _decode(path, data, "utf-8-sig")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _decode(path, data, "utf-16")
    for encoding in ("utf-8", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if "\x00" not in text:
            return text
    best = from_bytes(data).best()
    if best is None or "\x00" in str(best):
        raise PrepError(f"{path}: cannot decode the bytes as text; expected UTF-8, UTF-8 with BOM or GBK/GB18030.")
    return str(best)


def _decode(path: Path, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise PrepError(f"{path}: invalid {encoding} at byte {err.start}; expected a consistently encoded text file.") from None
