"""Reader for JSON and JSONL in alpaca, sharegpt and OpenAI-messages shapes.

The shape is detected per item. A corrupt ``.json`` file is an error naming the
line and column; a malformed line in a ``.jsonl`` file is a rejected row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from prep.errors import PrepError
from prep.readers.decode import json_array, lines_of, read_text_file
from prep.records import Conversation, Provenance, Rejected, Turn

USER_ROLES = {"human", "user", "用户", "来访者"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "model", "chatgpt", "助手", "咨询师"}
SYSTEM_ROLES = {"system", "系统"}


class ShapeError(ValueError):
    """An item that is not alpaca, sharegpt or OpenAI messages."""


def _role(name: object) -> str:
    role = str(name).strip().lower()
    if role in USER_ROLES:
        return "user"
    if role in ASSISTANT_ROLES:
        return "assistant"
    if role in SYSTEM_ROLES:
        return "system"
    raise ShapeError(f"unknown role '{name}'")


TEXT_PARTS = ("text", "input_text", "output_text")  # Chat Completions, and Responses API exports


def _content_text(content: object) -> str:
    """A message's text: a string, or an OpenAI content-part list whose text parts are joined."""
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") in TEXT_PARTS for part in content):
            kinds = sorted({str(part.get("type")) if isinstance(part, dict) else type(part).__name__ for part in content})
            raise ShapeError(f"a message has content parts other than text ({', '.join(kinds)})")
        return "\n".join(str(part.get("text") or "").strip() for part in content).strip()
    return str(content or "").strip()


def _from_messages(messages: list, role_key: str, content_key: str) -> tuple[list[Turn], str | None]:
    turns, system = [], None
    for message in messages:
        if not isinstance(message, dict):
            raise ShapeError("a message is not an object")
        role = _role(message.get(role_key))
        content = _content_text(message.get(content_key))
        if role == "system":
            system = content or None
        else:
            turns.append(Turn(role, content))
    return turns, system


def _text(value: object, field: str) -> str:
    """An alpaca field's text; a list or object (a ranking dataset's [chosen, rejected] output) is no answer to train."""
    if isinstance(value, (list, dict)):
        raise ShapeError(f"{field} is a JSON {'list' if isinstance(value, list) else 'object'}, not text "
                         "(a ranking dataset's [chosen, rejected] pair is not supervised data)")
    return str(value if value is not None else "").strip()


def item_to_conversation(item: object, provenance: Provenance) -> Conversation:
    """Convert one alpaca / sharegpt / OpenAI-messages item into a conversation."""
    if not isinstance(item, dict):
        raise ShapeError("item is not a JSON object")
    system = item.get("system") or None
    if isinstance(item.get("conversations"), list):
        turns, inner_system = _from_messages(item["conversations"], "from", "value")
    elif isinstance(item.get("messages"), list):
        turns, inner_system = _from_messages(item["messages"], "role", "content")
    elif "instruction" in item or "output" in item:
        turns, inner_system = [], None
        for pair in item.get("history") or []:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise ShapeError("history is not a list of [question, answer] pairs")
            turns += [Turn("user", _text(pair[0], "a history question")), Turn("assistant", _text(pair[1], "a history answer"))]
        question = "\n".join(_text(item.get(key), key) for key in ("instruction", "input")).strip()
        turns += [Turn("user", question), Turn("assistant", _text(item.get("output"), "output"))]
    else:
        raise ShapeError("expected alpaca (instruction/output), sharegpt (conversations) or OpenAI (messages) keys")
    if item.get("origin") in ("labelled", "distilled", "feedback"):
        provenance.origin = item["origin"]
        provenance.created = item.get("reviewed_at") or provenance.created
    # Annotator and verdict count on every item, as the table columns do (not only on prep review's feedback).
    annotator = item.get("reviewer") or item.get("annotator")
    provenance.annotator = str(annotator).strip() if annotator not in (None, "") else provenance.annotator
    return Conversation(
        turns,
        provenance,
        system=inner_system or (str(system).strip() if system else None),
        category=item.get("category") or None,
        record_id=str(item["id"]) if item.get("id") is not None else None,
        meta=_meta(item, provenance),
    )


def _meta(item: dict, provenance: Provenance) -> dict:
    """The annotator's verdict, and for prep review's feedback the review and case it decided (dedup keeps every
    answer one review accepted for a case) and whether the line withdraws earlier reviewed answers (prep.feedback)."""
    meta = {"verdict": str(item["verdict"])} if item.get("verdict") not in (None, "") else {}
    if provenance.origin == "feedback" and item.get("case_id") not in (None, ""):
        meta["review_case"] = f"{provenance.source}#{item['case_id']}"
    if provenance.origin == "feedback" and item.get("withdraw") is True:
        meta["withdraw"] = True
    return meta


def _records(items: list, path: Path, unit: str, origin: str) -> Iterator[Conversation | Rejected]:
    for index, item in enumerate(items, start=1):
        provenance = Provenance(str(path), f"{unit} {index}", origin=origin)
        try:
            yield item_to_conversation(item, provenance)
        except ShapeError as err:
            yield Rejected("unknown_shape", provenance, detail=str(err), raw=json.dumps(item, ensure_ascii=False)[:2000])


def read_json(path: Path, origin: str = "labelled") -> Iterator[Conversation | Rejected]:
    """Yield records from a JSON array (or an object holding one under ``data``)."""
    text = read_text_file(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PrepError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg}); expected a JSON array of records.") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise PrepError(f"{path}: top-level JSON is a {type(data).__name__}; expected an array of records.")
    yield from _records(data, path, "item", origin)


def is_journal_entry(item: object) -> bool:
    """Whether a JSON object is a ``prep distill`` journal line."""
    return isinstance(item, dict) and "request_id" in item and "status" in item and "pairs" in item


def read_journal_entries(path: Path, entries: list[tuple[int, dict]], origin: str = "distilled") -> Iterator[Conversation | Rejected]:
    """Conversations from a distillation journal: the last line per request id counts."""
    latest: dict[str, tuple[int, dict]] = {}
    for number, entry in entries:
        latest[entry["request_id"]] = (number, entry)
    for number, entry in sorted(latest.values(), key=lambda x: x[0]):
        base = dict(source=str(path), origin=origin, teacher=entry.get("model"), template_id=entry.get("template_id"),
                    request_id=entry["request_id"], created=entry.get("time"))
        if entry["status"] not in ("ok", "truncated"):
            detail = entry.get("error") or f"finish_reason {entry.get('finish_reason')}"
            yield Rejected(f"distill_{entry['status']}", Provenance(location=f"line {number}", **base), detail=detail, raw=entry.get("raw"))
            continue
        for k, messages in enumerate(entry.get("pairs") or [], start=1):
            provenance = Provenance(location=f"line {number} conversation {k}", **base)
            try:
                turns, system = _from_messages(messages, "role", "content")
                yield Conversation(turns, provenance, system=system, category=(entry.get("topic") or {}).get("concern"))
            except ShapeError as err:
                yield Rejected("unknown_shape", provenance, detail=str(err))


def read_jsonl(path: Path, origin: str = "labelled") -> Iterator[Conversation | Rejected]:
    """Yield records from JSON Lines; a malformed line is a rejected row, not a crash.

    A ``prep distill`` journal is recognised by its lines and read as distilled data. A file that is one JSON array
    (``json.dump`` saved as .jsonl; LLaMA-Factory's loader reads it) is read as one: line by line it was a rejected
    row per line and the build went on without its data.
    """
    text = read_text_file(path)
    array = json_array(text)
    if array is not None:
        yield from _records(array, path, "item", origin)
        return
    journal: list[tuple[int, dict]] = []
    for number, line in enumerate(lines_of(text), start=1):
        if not line.strip():
            continue
        provenance = Provenance(str(path), f"line {number}", origin=origin)
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            yield Rejected("malformed_json", provenance, detail=err.msg, raw=line[:2000])
            continue
        if is_journal_entry(item):
            journal.append((number, item))
            continue
        try:
            yield item_to_conversation(item, provenance)
        except ShapeError as err:
            yield Rejected("unknown_shape", provenance, detail=str(err), raw=line[:2000])
    if journal:
        yield from read_journal_entries(path, journal)
