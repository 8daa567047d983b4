"""The one parser for the Llama2-Chinese / seed text format.

``<s>System: ...\n</s><s>Human: ...\n</s><s>Assistant: ...\n</s>`` as teachers
really emit it: the seed prompt's own variant (``\n<s><s>Assistant: ...\n<s>``),
full-width colons, Markdown bold labels, numbered items, code fences, intro and
outro chatter, multi-line answers. Used by ``prep build`` (``.txt`` files and a
``text`` column) and by ``prep distill``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prep.records import Turn

_ROLE_BY_LABEL = {
    "human": "user",
    "user": "user",
    "用户": "user",
    "assistant": "assistant",
    "助手": "assistant",
    "system": "system",
    "系统": "system",
}

# A role label at the start of a line or right after a tag; bold and full-width colons tolerated.
_LABEL = re.compile(
    r"(?:^|(?<=<s>)|(?<=</s>))[ \t]*(?:[#>*\-]+[ \t]*)?(?:\d{1,3}[.、)）][ \t]*)?(?:<s>[ \t]*)*"
    r"(?:\*\*|__)?(Human|User|Assistant|System|用户|助手|系统)(?:\*\*|__)?[ \t]*[:：](?:\*\*|__)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
_CLOSE_TAG = re.compile(r"</s>|<s>")
_FENCE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$", re.MULTILINE)


@dataclass
class ParsedConversation:
    """One conversation found in a text, or why it cannot be used."""

    turns: list[Turn] = field(default_factory=list)
    system: str | None = None
    error: str | None = None  # "truncated", "no_pairs", "bad_roles"
    raw: str = ""


@dataclass
class _Segment:
    role: str
    content: str
    closed: bool
    raw: str


def _segments(text: str) -> list[_Segment]:
    text = _FENCE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    matches = list(_LABEL.finditer(text))
    segments = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end():end]
        close = _CLOSE_TAG.search(body)
        content = body[: close.start()] if close else body
        segments.append(
            _Segment(
                role=_ROLE_BY_LABEL[match.group(1).lower()],
                content=content.strip(),
                closed=close is not None,
                raw=text[match.start():end],
            )
        )
    return segments


def parse_text(text: str, *, one_conversation: bool = False) -> list[ParsedConversation]:
    """Split ``text`` into conversations.

    With ``one_conversation`` (a CSV ``text`` cell) all turns form one
    (possibly multi-turn) conversation; otherwise (raw teacher output) every
    Human/Assistant pair is its own conversation, a ``System`` label applying to
    the pairs after it. When the text closes turns with tags, a last turn with
    no closing tag is truncated output and is reported as such.
    """
    segments = _segments(text)
    uses_tags = any(seg.closed for seg in segments)
    if not segments:
        return [ParsedConversation(error="no_pairs", raw=text)] if text.strip() else []
    if one_conversation:
        return [_assemble(segments, uses_tags)]
    conversations: list[ParsedConversation] = []
    system: str | None = None
    pending: list[_Segment] = []
    for seg in segments:
        if seg.role == "system":
            system = seg.content or None
            continue
        pending.append(seg)
        if seg.role == "assistant":
            conversations.append(_assemble(pending, uses_tags, system))
            pending = []
    if pending:
        conversations.append(_assemble(pending, uses_tags, system))
    return conversations


def _assemble(segments: list[_Segment], uses_tags: bool, system: str | None = None) -> ParsedConversation:
    parsed = ParsedConversation(system=system, raw="".join(seg.raw for seg in segments))
    for seg in segments:
        if seg.role == "system":
            parsed.system = seg.content or None
        else:
            parsed.turns.append(Turn(seg.role, seg.content))
    if uses_tags and segments and not segments[-1].closed:
        parsed.error = "truncated"
    elif not parsed.turns or parsed.turns[-1].role != "assistant":
        parsed.error = "no_pairs" if len(parsed.turns) < 2 else "bad_roles"
    return parsed


def format_text(turns: list[Turn], system: str | None = None) -> str:
    """Render a conversation back into the canonical ``<s>Human:`` text format."""
    label = {"user": "Human", "assistant": "Assistant"}
    parts = [f"<s>System: {system}\n</s>"] if system else []
    parts += [f"<s>{label[t.role]}: {t.content}\n</s>" for t in turns]
    return "".join(parts)
