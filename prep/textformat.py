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
DIALOGUE_SEPARATOR = re.compile(r"^[^\S\n]*#{3,}[^\S\n]*$", re.MULTILINE)
# A teacher's words about its output, not part of an answer, in untagged text: a numbered heading before the next
# dialogue (第二组对话： / 对话 3：), and an outro at the end that names the set of dialogues (以上是20组对话…,
# 这20组问答…, 希望以上对话对您有帮助, The above conversations…). A counsellor's own words (以上这些方法…对话,
# 希望以上建议能让你们的对话更轻松, These conversations get easier) name no set and stay.
_NUMBER = r"[\d一二三四五六七八九十百]+"
# Words a teacher numbers its dialogues with besides 对话 (示例1：, Example 2:, Session 3): they cut only a series
# numbered 1, 2, 3 … with no turn before the first, so examples numbered inside one answer stay in it.
_EXAMPLE_NOUN = r"(?:dialogue|conversation|示例|样例|案例|example|sample|session)"
_HEADING_LINE = re.compile(
    rf"[#*\s]*(?:第\s*{_NUMBER}\s*[组段个轮]\s*(?:心理咨询|咨询|模拟)?(?:对话|问答)|(?:对话|问答|{_EXAMPLE_NOUN})\s*#?\s*{_NUMBER})"
    r"\s*[:：]?[#*\s]*", re.IGNORECASE)
_SET_OF_DIALOGUES = rf"(?:{_NUMBER}\s*[组段个条轮]\s*)?(?:心理咨询|咨询|模拟|示例)?(?:对话|问答对?|示例|样例)"
_OUTRO_LINE = re.compile(
    rf"(?:(?:以上|上述|上面)(?:就|共|便)?(?:是|为|给出了?|生成了?|列出了?|提供了?)?(?:这些)?{_SET_OF_DIALOGUES}"
    rf"|这\s*{_NUMBER}\s*[组段个条轮]\s*(?:心理咨询|咨询|模拟)?(?:对话|问答)"
    rf"|希望(?:以上|上述|这些){_SET_OF_DIALOGUES}"
    r"|(?:The above|Above are|I hope these)\s+(?:\d+\s+)?(?:sample\s+|example\s+|counsell?ing\s+)?(?:conversations|dialogues|Q&A|examples))",
    re.IGNORECASE)
# Chinese labels a counsellor quotes inside an answer (你可以这样说：\n用户：…): inside an open tagged turn they are text.
_QUOTABLE_LABELS = {"用户", "助手", "系统"}


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


_BOLD_AFTER_COLON = re.compile(r"[:：](\*\*|__)[ \t]*$")


def _with_its_bold(content: str, text: str, label: re.Match) -> str:
    """A turn whose opening ** the label took (Human：**我很累。** — unlike a bold label, **Human：**): both markers
    dropped when they wrap the whole turn, the opening one given back when the bold ends inside it (a stray ** was
    left at the end or in the middle of the turn)."""
    after_colon = _BOLD_AFTER_COLON.search(label.group(0))
    if not after_colon or text[max(label.start(1) - 2, 0):label.start(1)] in ("**", "__"):
        return content
    marker = after_colon.group(1)
    if content.count(marker) % 2 == 0:
        return content
    if content.endswith(marker) and content.count(marker) == 1:
        return content[: -len(marker)].strip()
    return marker + content


def _segments(text: str) -> list[_Segment]:
    text = _FENCE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    matches = list(_LABEL.finditer(text))
    segments = _cut(text, matches)
    if any(seg.closed for seg in segments):  # tagged: 用户： quoted inside an open answer is text
        segments = _cut(text, _opening_labels(text, matches))
    if segments and not segments[-1].closed and segments[-1].role == "assistant":
        segments[-1].content = _without_outro(segments[-1].content)
    return segments


def _opening_labels(text: str, matches: list[re.Match]) -> list[re.Match]:
    """The labels that open a turn in tagged text: every English label (Human:, Assistant:; a missing close tag
    must not merge two turns), and a Chinese one (用户：) only with a tag since the last label kept."""
    kept: list[re.Match] = []
    for match in matches:
        if not kept or match.group(1) not in _QUOTABLE_LABELS or _CLOSE_TAG.search(text, kept[-1].end(), match.end()):
            kept.append(match)
    return kept


def _cut(text: str, matches: list[re.Match]) -> list[_Segment]:
    segments = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end():end]
        close = _CLOSE_TAG.search(body)
        # The seed's variant (我理解你。\n<s><s>Human:) closes a turn with the tags the next label starts with.
        closed_by_next = index + 1 < len(matches) and _CLOSE_TAG.search(matches[index + 1].group(0)) is not None
        content = body[: close.start()].strip() if close else body.strip() if closed_by_next else _without_heading(body)
        segments.append(
            _Segment(
                role=_ROLE_BY_LABEL[match.group(1).lower()],
                content=_with_its_bold(content, text, match),
                closed=close is not None or closed_by_next,
                raw=text[match.start():end],
            )
        )
    return segments


def _without_heading(body: str) -> str:
    """An untagged turn without trailing numbered headings (第二组对话：) that introduce the next dialogue."""
    lines = body.strip().split("\n")
    while len(lines) > 1 and (not lines[-1].strip() or _HEADING_LINE.fullmatch(lines[-1].strip())):
        lines.pop()
    return "\n".join(lines).strip()


def _without_outro(answer: str) -> str:
    """The text's last, untagged answer without the teacher's outro: from a line that names the set of dialogues
    (以上是2组对话。) to the end (希望对您有帮助！ after it goes too); the first line is always content."""
    lines = answer.split("\n")
    outro = next((n for n, line in enumerate(lines) if n and _OUTRO_LINE.match(line.strip())), len(lines))
    return "\n".join(lines[:outro]).strip()


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
    return _dialogues(DIALOGUE_SEPARATOR.split(text))


def _dialogues(chunks: list[str]) -> list[ParsedConversation]:
    found = []
    for chunk in filter(str.strip, chunks):
        pieces, system = _numbered_dialogues(chunk)
        for parsed in (p for piece in pieces for p in parse_text(piece, one_conversation=True)):
            parsed.system = parsed.system or system
            found.append(parsed)
    return found


# A heading that numbers a whole dialogue, with or without a title: 第2段对话：, **对话 3**：, 【对话四】, ### 对话5：失眠的
# 大学生, 对话6 亲子冲突, Dialogue 7: Exam stress, Conversation 8 – Anxiety, 🌱 对话9, 对话 (10), 对话 11/20,
# Dialogue Thirteen, 示例1：, Example 2, Session 3. 第2轮 numbers a turn and is not one; 第一组： / 第一段： alone the steps of
# an answer (做两组：第一组：腹式呼吸 …).
_ENGLISH_NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                    "seventeen eighteen nineteen twenty").split()
_HEADING_NUMBER = rf"[(（]?[ \t]*({_NUMBER}|{'|'.join(_ENGLISH_NUMBERS)})[ \t]*[)）]?(?:[ \t]*/[ \t]*\d+)?"
_DIALOGUE_HEADING = re.compile(
    rf"(?:[^\w\n]|_)*(?:第[ \t]*({_NUMBER})[ \t]*[组段个][ \t]*(?:心理咨询|咨询|模拟)?(?:对话|问答)"
    rf"|(?:模拟|心理咨询|咨询)?(?:对话|{_EXAMPLE_NOUN})[ \t]*(?:#[ \t]*)?{_HEADING_NUMBER}(?![\w]))"
    r"[】\]*_ \t]*(?:[:：\-–—.、（( \t][^\n]*)?", re.IGNORECASE)
_HEADING_MAX_CHARS = 80  # a title is a few words; a longer line is text (and the pattern never meets a huge line)
# A role label anywhere in a heading line: the dialogue's first turn written on the heading's line.
_INLINE_LABEL = re.compile(r"(?:\*\*|__)?(?:Human|User|Assistant|用户|助手)(?:\*\*|__)?[ \t]*[:：]", re.IGNORECASE)
_RULE_LINE = re.compile(r"[ \t]*(?:[-*_][ \t]*){3,}")  # a Markdown horizontal rule (---) between dialogues
_DIGITS = {c: n for n, c in enumerate("零一二三四五六七八九")}


def _numeral(text: str) -> int | None:
    """1-99 written with digits, Chinese numerals (二, 十, 十二, 二十三) or English words up to twenty; None for
    anything else."""
    if text.isdigit():
        return int(text)
    if text.lower() in _ENGLISH_NUMBERS:
        return _ENGLISH_NUMBERS.index(text.lower()) + 1
    tens, ten, units = text.partition("十")
    if not ten:
        tens, units = "", text
    if len(tens) > 1 or len(units) > 1 or not all(c in _DIGITS for c in tens + units) or not (ten or units):
        return None
    return (_DIGITS[tens] if tens else 1 if ten else 0) * 10 + (_DIGITS[units] if units else 0)


def _heading(line: str) -> tuple[int, str] | None:
    """The number of a dialogue heading line and what follows the heading on its line (a first turn, 对话1： 用户：…);
    None for any other line."""
    inline = _INLINE_LABEL.search(line)
    head = line[:inline.start()] if inline else line
    if len(head.strip()) > _HEADING_MAX_CHARS or _LABEL.match(head.strip()):
        return None
    match = _DIALOGUE_HEADING.fullmatch(head.strip())
    number = _numeral(match.group(1) or match.group(2)) if match else None
    return None if number is None else (number, line[inline.start():] if inline else "")


def _numbered_dialogues(chunk: str) -> tuple[list[str], str | None]:
    """A chunk that is a numbered series of dialogues without ``###`` between them (第1段对话： … 第2段对话： …), cut
    into its dialogues, and a System: prompt written once before them; the chunk whole otherwise. Cut when headings
    number dialogues 1, 2, 3 … in order and no turn comes before the first: a heading quoted inside an answer, a
    lone 对话 1： or 第1轮 (a turn) never cuts a dialogue. Each piece is then judged alone: one cut off by the length
    limit or broken is rejected, the others are kept (a merged text would put two clients in one dialogue and the
    headings inside answers)."""
    lines = chunk.split("\n")
    headings = [(n, found) for n, line in enumerate(lines) if line.strip() and (found := _heading(line))]
    # A list of the dialogues' titles before them (对话1：失眠 / 对话2：考试焦虑 …) counts 1, 2 … once already:
    # the dialogues start at the last heading 1 (the list is then intro, which may hold no turn).
    firsts = [index for index, (_, (number, _)) in enumerate(headings) if number == 1]
    headings = headings[firsts[-1]:] if firsts else headings
    opening = len(headings) == 1 and not any(line.strip() for line in lines[:headings[0][0]])  # 对话2： opening a ### part
    if not opening and (len(headings) < 2 or [number for _, (number, _) in headings] != list(range(1, len(headings) + 1))):
        return [chunk], None
    intro = "\n".join(lines[:headings[0][0]])
    if any(_ROLE_BY_LABEL[m.group(1).lower()] != "system" for m in _LABEL.finditer(intro)):
        return [chunk], None
    starts = [n for n, _ in headings]
    pieces = ["\n".join([rest, *lines[start + 1:end]]) for (start, (_, rest)), end in zip(headings, starts[1:] + [len(lines)])]
    return [_without_trailing_rules(piece) for piece in pieces], _intro_system(intro)


def _without_trailing_rules(piece: str) -> str:
    lines = piece.rstrip().split("\n")
    while lines and (not lines[-1].strip() or _RULE_LINE.fullmatch(lines[-1])):
        lines.pop()
    return "\n".join(lines)


def _intro_system(intro: str) -> str | None:
    """The System: prompt in the text before the first heading: up to its close tag, or without one its first line
    (the intro, 以下是2段对话：, often follows on the next)."""
    segments = [seg for seg in _segments(intro) if seg.role == "system"]
    if not segments:
        return None
    system = segments[-1].content if segments[-1].closed else segments[-1].content.split("\n")[0]
    return _without_trailing_rules(system).strip() or None


def as_dialogue_file(text: str) -> list[ParsedConversation] | None:
    """The dialogues of a text that is clearly ``###``-separated dialogues: every part between separators opens
    with a role label (or a dialogue heading) and parses whole. None otherwise (a ``###`` used as a divider inside an answer), so the
    caller reads the text pair by pair instead."""
    chunks = DIALOGUE_SEPARATOR.split(text)
    if len(chunks) == 1:
        return None
    # The teacher's intro (好的，以下是3组对话：) before the first ### and an outro after the last: no label, no turn.
    chunks = [chunk for n, chunk in enumerate(chunks) if n not in (0, len(chunks) - 1) or _LABEL.search(chunk) or _has_heading(chunk)]
    openings = [_FENCE.sub("", chunk).strip() for chunk in chunks]
    if not all(_LABEL.match(opening) or _heading(opening.split("\n", 1)[0]) for opening in openings if opening):
        return None
    dialogues = _dialogues(chunks)
    return dialogues if all(not d.error for d in dialogues) else None


def _has_heading(chunk: str) -> bool:
    return any(_heading(line) for line in chunk.split("\n") if line.strip())


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
