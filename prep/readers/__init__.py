"""Readers: one per input shape, each yielding canonical records.

``read_path`` picks the reader from the extension (and, for JSON, the content)
and walks directories. Every reader yields :class:`~prep.records.Conversation`
or :class:`~prep.records.Rejected` items, one per input row, so the caller can
account for every row; a file that cannot be read at all raises
:class:`~prep.errors.PrepError` with one clear sentence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prep.errors import PrepError
from prep.readers.jsonfile import read_json, read_jsonl
from prep.readers.table import read_table
from prep.readers.text import read_text
from prep.records import Conversation, Rejected

READERS = {
    ".csv": read_table,
    ".tsv": read_table,
    ".xlsx": read_table,
    ".xls": read_table,
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".txt": read_text,
}


# What ``prep distill --batch`` keeps next to its journal (prep.distill_batch): the uploaded requests and the batches'
# state. Not data: a folder of journals is read without them.
DISTILL_SIDE_FILES = re.compile(r".+\.batch-input-[0-9a-f]+\.jsonl|.+\.batches\.jsonl")


# Files and folders in a folder that are no one's data: hidden ones (.git, .ipynb_checkpoints' copies of every notebook's
# CSV), macOS's __MACOSX and ._NAME resource forks, and Office's ~$NAME lock files of an open workbook.
_NOT_DATA = re.compile(r"\.|~\$|__MACOSX$")


def _folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, skipping what is not data (``_NOT_DATA``); a subfolder it cannot list is an error
    (rglob skipped it silently, and its rows with it)."""
    def unreadable(err: OSError) -> None:
        raise err

    files = []
    for root, folders, names in os.walk(folder, onerror=unreadable):
        folders[:] = sorted(name for name in folders if not _NOT_DATA.match(name))
        files += [Path(root) / name for name in names if not _NOT_DATA.match(name)]
    return files


def supported_files(path: Path) -> list[Path]:
    """The input files behind ``path``: the file itself, or every supported file in a folder."""
    path = Path(path)
    if not path.exists():
        raise PrepError(f"{path}: no such file or folder.")
    if path.is_dir():
        files = sorted(p for p in _folder_files(path) if p.is_file() and p.suffix.lower() in READERS
                       and not DISTILL_SIDE_FILES.fullmatch(p.name))
        if not files:
            raise PrepError(f"{path}: folder holds no supported file (expected {', '.join(sorted(READERS))}).")
        return files
    if path.suffix.lower() not in READERS:
        raise PrepError(f"{path}: unsupported file type '{path.suffix}' (expected {', '.join(sorted(READERS))}).")
    return [path]


def read_path(path: Path, origin: str = "labelled") -> Iterator[Conversation | Rejected]:
    """Yield records from a file or folder."""
    for file in supported_files(path):
        modified = datetime.fromtimestamp(file.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        for item in READERS[file.suffix.lower()](file, origin=origin):
            item.provenance.created = item.provenance.created or modified  # when the row was last written
            yield item
