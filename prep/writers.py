"""Writers: LLaMA-Factory alpaca and sharegpt files, the rejected-rows file, and the registry.

The registry entries always carry the FULL ``columns`` (and ``tags``) mapping:
LLaMA-Factory turns every key missing from a given ``columns`` into None.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from prep.errors import PrepError
from prep.fsutil import atomic_write_bytes, atomic_write_json
from prep.records import Conversation

REGISTRY_FILE = "dataset_info.json"

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}


def to_alpaca(rec: Conversation, default_system: str) -> dict:
    """One alpaca item: the last exchange as instruction/output, earlier ones as history."""
    pairs = [[rec.turns[i].content, rec.turns[i + 1].content] for i in range(0, len(rec.turns) - 1, 2)]
    return {
        "instruction": pairs[-1][0],
        "input": "",
        "output": pairs[-1][1],
        "system": rec.system or default_system,
        "history": pairs[:-1],
    }


def to_sharegpt(rec: Conversation, default_system: str) -> dict:
    """One sharegpt item with human/gpt turns."""
    tag = {"user": "human", "assistant": "gpt"}
    return {
        "conversations": [{"from": tag[t.role], "value": t.content} for t in rec.turns],
        "system": rec.system or default_system,
    }


def write_json_list(path: Path, items: list[dict]) -> None:
    atomic_write_json(path, items)


def write_jsonl(path: Path, items: list[dict]) -> None:
    """One JSON object per line (rejected rows, conflicts), written atomically."""
    atomic_write_bytes(path, b"".join(orjson.dumps(item, option=orjson.OPT_NON_STR_KEYS) + b"\n" for item in items))


def registry_entries(name: str) -> dict[str, dict]:
    """The three dataset_info.json entries ``prep build`` registers for ``name``."""
    alpaca = {"formatting": "alpaca", "columns": dict(ALPACA_COLUMNS)}
    return {
        f"{name}_alpaca": {"file_name": f"data/{name}_alpaca.json", **alpaca},
        f"{name}_sharegpt": {
            "file_name": f"data/{name}_sharegpt.json",
            "formatting": "sharegpt",
            "columns": dict(SHAREGPT_COLUMNS),
            "tags": dict(SHAREGPT_TAGS),
        },
        f"{name}_test": {"file_name": f"data/{name}_test.json", **alpaca},
    }


def load_registry(dataset_dir: Path) -> dict:
    """Read ``dataset_info.json``; a file that is not a JSON object stops with a clear error."""
    path = Path(dataset_dir) / REGISTRY_FILE
    if not path.exists():
        return {}
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PrepError(f"{path}: not valid JSON ({err}); fix or remove it, it was left untouched.") from None
    if not isinstance(registry, dict):
        raise PrepError(f"{path}: top level is not a JSON object; fix or remove it, it was left untouched.")
    return registry


def register(dataset_dir: Path, entries: dict[str, dict], remove: list[str] = ()) -> Path:
    """Add or replace ``entries`` in the registry and drop the names in ``remove``, keeping every other entry,
    atomically."""
    registry = load_registry(dataset_dir)
    registry.update(entries)
    for name in remove:
        registry.pop(name, None)
    path = Path(dataset_dir) / REGISTRY_FILE
    atomic_write_json(path, registry)
    return path
