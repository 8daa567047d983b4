"""Atomic file writes: a temp file in the same folder, fsync, then rename.

Readers of a file written here see either the old content or the new one,
never half of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only (0600); a written file gets the mode open() would give it.
_FILE_MODE = 0o666 & ~_process_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file intact; an existing file keeps its mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o777 if path.exists() else _FILE_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_yaml_mapping(path: Path, option: str) -> dict:
    """A YAML file that must hold a mapping; every failure is one sentence naming ``option``."""
    import yaml

    from prep.errors import PrepError

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrepError(f"{option} {path}: no such file.") from None
    except yaml.YAMLError as err:
        raise PrepError(f"{option} {path}: not valid YAML ({type(err).__name__}).") from None
    if not isinstance(data, dict):
        raise PrepError(f"{option} {path}: expected a YAML mapping.")
    return data


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as pretty UTF-8 JSON (Chinese kept readable, 2-space indent) atomically.

    orjson: the standard library's indenting encoder is pure Python, seconds for a 100k-row dataset.
    """
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
