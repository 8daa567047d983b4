"""The one parser for the Llama2-Chinese / seed text format.

``<s>System: ...\n</s><s>Human: ...\n</s><s>Assistant: ...\n</s>`` as teachers
really emit it: the seed prompt's own variant (``\n<s><s>Assistant: ...\n<s>``),
full-width colons, Markdown bold labels, numbered items, code fences, intro and
outro chatter, multi-line answers, multi-turn dialogues separated by ``###``
lines. Used by ``prep build`` (``.txt`` files and a ``text`` column) and by
``prep distill``.
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
# The multi-turn template asks for dialogues separated by a line of ###.
DIALOGUE_SEPARATOR = re.compile(r"^[ \t]*#{3,}[ \t]*$", re.MULTILINE)
# A teacher's words about its output, not part of an answer: a heading before the next dialogue (第二组对话：) and
# an outro about the dialogues (以上是20组对话…, 希望这些问答对您有帮助). A counsellor's own closing line
# (希望这些建议对你有帮助, 希望今天的对话能帮到你) mentions no set of dialogues and stays.
_HEADING_LINE = re.compile(
    r"[#*\s]*(?:第\s*[\d一二三四五六七八九十百]+\s*[组段个轮]\s*)?(?:对话|问答|示例|样例|dialogue|conversation|example)"
    r"\s*[\d一二三四五六七八九十百]*\s*[:：]?[#*\s]*", re.IGNORECASE)
_OUTRO_LINE = re.compile(
    r"(?:(?:以上|上述|上面|这些|这\s*\d+\s*[组段个条]|希望(?:以上|上述|这些))[^\n]{0,40}?(?:对话|问答|示例|样例|数据)"
    r"|(?:The above|These|Here are|I hope these|Let me know|Feel free)[^\n]{0,60}?(?:conversations?|dialogues?|examples?|Q&A|pairs))",
    re.IGNORECASE)


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
    segments = _cut(text, matches)
    if any(seg.closed for seg in segments):  # tagged: a label inside an open turn (用户： in an answer) is text
        segments = _cut(text, _opening_labels(text, matches))
    return segments


def _opening_labels(text: str, matches: list[re.Match]) -> list[re.Match]:
    """The labels that open a turn in tagged text: the first, and each with a tag since the last one kept."""
    kept: list[re.Match] = []
    for match in matches:
        if not kept or _CLOSE_TAG.search(text, kept[-1].end(), match.end()):
            kept.append(match)
    return kept


def _cut(text: str, matches: list[re.Match]) -> list[_Segment]:
    segments = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end():end]
        close = _CLOSE_TAG.search(body)
        segments.append(
            _Segment(
                role=_ROLE_BY_LABEL[match.group(1).lower()],
                content=body[: close.start()].strip() if close else _without_chatter(body),
                closed=close is not None,
                raw=text[match.start():end],
            )
        )
    return segments


def _without_chatter(body: str) -> str:
    """An untagged turn without the teacher's outro (from a line about the dialogues on) or trailing heading lines
    (第二组对话：); the first line is always content."""
    lines = body.strip().split("\n")
    outro = next((n for n, line in enumerate(lines) if n and _OUTRO_LINE.match(line.strip())), len(lines))
    lines = lines[:outro]
    while len(lines) > 1 and (not lines[-1].strip() or _HEADING_LINE.fullmatch(lines[-1].strip())):
        lines.pop()
    return "\n".join(lines).strip()


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


def parse_dialogues(text: str) -> list[ParsedConversation]:
    """Multi-turn dialogues separated by lines of ``###`` (the multi-turn template's format): each is one
    conversation, its turns kept together."""
    return [parsed for chunk in DIALOGUE_SEPARATOR.split(text) if chunk.strip()
            for parsed in parse_text(chunk, one_conversation=True)]


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
