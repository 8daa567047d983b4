"""Atomic file writes: a temp file in the same folder, fsync, then rename.

Readers of a file written here see either the old content or the new one,
never half of it; ``all_or_nothing`` extends that to a set of files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only (0600); a written file gets the mode open() would give it.
_FILE_MODE = 0o666 & ~_process_umask()


_staged = threading.local()  # .renames: (temp file, target) pairs waiting for the end of all_or_nothing()


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file intact; an existing file keeps its mode
    unless ``mode`` is given (set before any data is written: 0o600 for a private file is never readable by others).

    Inside ``all_or_nothing()`` the rename waits for the end of the block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else _FILE_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        renames = getattr(_staged, "renames", None)
        if renames is None:
            os.replace(tmp_name, path)
        else:
            renames.append((tmp_name, path))
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Files written with ``atomic_write_bytes`` inside the block replace their old versions together at its end,
    or, if the block fails (a full disk, a bad value), none does: a set of outputs (train, test, report) is never
    half new, half old."""
    if getattr(_staged, "renames", None) is not None:  # nested: the outer block renames
        yield
        return
    _staged.renames = []
    try:
        yield
    except BaseException:
        for tmp_name, _ in _staged.renames:
            Path(tmp_name).unlink(missing_ok=True)
        raise
    else:
        try:
            in_the_way = next((path for _, path in _staged.renames if Path(path).is_dir()), None)
            if in_the_way is not None:  # found before any rename: the set is not left half new
                raise IsADirectoryError(errno.EISDIR, "a folder is in the place of an output", str(in_the_way))
            for tmp_name, path in _staged.renames:
                os.replace(tmp_name, path)
        finally:  # a rename that fails (a folder in the way) leaves no temp file behind
            for tmp_name, _ in _staged.renames:
                Path(tmp_name).unlink(missing_ok=True)
    finally:
        _staged.renames = None


def read_yaml_mapping(path: Path, option: str) -> dict:
    """A YAML file that must hold a mapping; every failure is one sentence naming ``option``."""
    import yaml

    from prep.errors import PrepError
    from prep.readers.decode import read_input

    try:
        data = yaml.safe_load(read_input(path, option))  # UTF-8 with or without BOM, GBK: as the data readers decode
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = f": {err.problem}" if getattr(err, "problem", None) else ""
        raise PrepError(f"{option} {path}: not valid YAML{where} ({type(err).__name__}{problem}).") from None
    if not isinstance(data, dict):
        raise PrepError(f"{option} {path}: expected a YAML mapping.")
    return data


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, mode: int | None = None) -> None:
    """Write ``obj`` as pretty UTF-8 JSON (Chinese kept readable, 2-space indent) atomically.

    orjson: the standard library's indenting encoder is pure Python, seconds for a 100k-row dataset.
    """
    atomic_write_bytes(path, orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n", mode)


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else the nearest folder above it that does (where it would be made)."""
    existing = Path(os.path.abspath(path))
    while not os.path.exists(existing) and existing != existing.parent:  # (Path.exists raises in a folder we cannot enter)
        existing = existing.parent
    return existing


def has_model_weights(folder: Path) -> bool:
    """Whether a model folder holds its weights (*.safetensors shards or *.bin), not only config and tokenizer."""
    return any(Path(folder).glob("*.safetensors")) or any(Path(folder).glob("*.bin"))


def model_files_problem(folder: Path) -> str | None:
    """What makes a model folder unloadable that a glance can tell, or None: a config.json that is not a JSON object,
    a *.safetensors file cut short (an interrupted download or copy: its header says how long it must be), or a shard
    its index names that is missing."""
    try:
        config = json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"config.json cannot be read as JSON ({getattr(err, 'strerror', None) or err})"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    for shard in sorted(Path(folder).glob("*.safetensors")):
        try:
            problem = _safetensors_problem(shard)
        except OSError as err:  # a link to a missing blob (a hub cache folder copied without them), unreadable
            problem = f"cannot be read ({err.strerror or err})"
        if problem:
            return f"{shard.name} {problem}"
    for index in Path(folder).glob("*.safetensors.index.json"):
        try:
            names = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError, TypeError):
            return f"{index.name} cannot be read as a shard index"
        if not all(isinstance(name, str) for name in names):
            return f"{index.name} cannot be read as a shard index (a weight_map value is not a file name)"
        missing = sorted(name for name in names if not Path(folder, str(name)).is_file())
        if missing:
            return f"{index.name} names {len(missing)} missing shard{'s' * (len(missing) > 1)} ({missing[0]})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file is whole: an 8-byte header length, the JSON header, then every tensor's bytes."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= min(size - 8, 100_000_000):
            return f"is not a safetensors file ({size} bytes)"
        try:
            header = json.loads(handle.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if not isinstance(end, int):
                raise TypeError(end)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "has an unreadable header"
    if size < 8 + length + end:
        return f"is cut short ({size:,} of {8 + length + end:,} bytes; a download or copy that did not finish?)"
    return None


def file_sha256(path: Path) -> str:
    """A file's SHA-256, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
