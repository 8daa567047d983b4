"""The one crisis detector and referral check, shared by build, distill, chat and eval.

``detect_crisis`` looks at what a user wrote for signs of suicide, self-harm or
harm to others (Chinese and English lexicon plus patterns), while ignoring
common confounders such as 累死了 / 笑死 / 难死了 / 死磕 / 想死你了 and
third-person news or fiction. ``refers_to_help`` tells whether an answer sends
the user to professional help or a hotline; ``ensure_referral`` appends the
configured hotlines to a reply that lacks them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_HOTLINES: tuple[str, ...] = (
    "全国心理援助热线 12356",
    "希望24热线 400-161-9995",
)
EMERGENCY_NUMBERS = "120 或 110"

_SELF_HARM_PATTERNS = [
    r"自杀", r"轻生", r"寻死", r"自尽", r"自残", r"自伤", r"自我伤害", r"伤害自己", r"割腕",
    r"不想活", r"活不下去", r"活着(?:真|也|还)?没(?:有)?(?:什么)?意思", r"活着有什么意思",
    r"不如死了", r"死了算了", r"死了就好", r"死了一了百了", r"一了百了", r"想去死", r"想死(?![你您他她它]|我了)",
    r"结束(?:自己的|我的)?生命", r"了结(?:自己|生命|此生)", r"离开这个世界", r"从这个世界(?:上)?消失",
    r"跳楼", r"跳河", r"跳江", r"跳桥", r"卧轨", r"上吊", r"烧炭", r"吞(?:了)?(?:一把|很多|大量)?(?:安眠药|药)",
    r"(?:攒|存|囤|吞)(?:了)?.{0,4}安眠药", r"安眠药.{0,4}(?:攒|存|囤|吞|吃光|全吃)", r"(?:用|拿)(?:刀|刀片|小刀)(?:划|割)", r"划(?:自己|手腕|胳膊|手臂)",
    r"遗书", r"遗言", r"后事", r"活够了", r"解脱(?:自己)?吧", r"永远睡(?:过去|着)",
    r"\bsuicid", r"\bkill(?:ing)? myself\b", r"\bend(?:ing)? my life\b", r"\bself[- ]harm", r"\bcut(?:ting)? myself\b",
    r"\bwant(?:s)? to die\b", r"\bdon'?t want to live\b", r"\bhurt(?:ing)? myself\b",
]
_HARM_OTHERS_PATTERNS = [
    r"(?:想|要|会)(?:去)?杀(?:了|掉)?(?:他|她|他们|人|全家)", r"同归于尽", r"报复社会", r"弄死(?:他|她|他们)",
    r"\bkill (?:him|her|them|everyone)\b",
]
# Uses of 死 that are figures of speech, not risk.
_CONFOUNDERS = re.compile(
    r"(?:累|笑|难|热|冷|饿|气|烦|吓|困|忙|急|丑|美|帅|痛|疼|馋|闷|尴尬|无聊)死(?:了|我了|人了|啦)?"
    r"|死磕|死机|死循环|死线|deadline|想死你|想死我了|笑不活了"
)
# Third-person news/fiction context: only discounted when the user says nothing about themself.
_THIRD_PARTY = re.compile(r"新闻|报道|小说|电影|电视剧|剧情|角色|主角|剧本|游戏里|历史上")
_FIRST_PERSON = re.compile(r"我|自己|\bI\b|\bmy\b|\bme\b", re.IGNORECASE)

_SELF_HARM = re.compile("|".join(_SELF_HARM_PATTERNS), re.IGNORECASE)
_HARM_OTHERS = re.compile("|".join(_HARM_OTHERS_PATTERNS), re.IGNORECASE)

_REFERRAL = re.compile(
    r"热线|12356|400-?161-?9995|(?<!\d)12[03](?!\d)|(?<!\d)110(?!\d)|心理医生|精神科|心理科|急诊|医院"
    r"|专业(?:的)?(?:心理)?(?:咨询|帮助|人员|人士|机构|支持|医生|治疗)|咨询师|危机干预",
)
_HOTLINE = re.compile(r"12356|400-?161-?9995")


@dataclass
class CrisisResult:
    """What the detector found in a message."""

    crisis: bool
    kind: str | None = None  # "self_harm" | "harm_others"
    matches: list[str] = field(default_factory=list)


def detect_crisis(text: str) -> CrisisResult:
    """Return whether ``text`` (a user's message) signals suicide, self-harm or harm to others."""
    cleaned = _CONFOUNDERS.sub(" ", text or "")
    self_harm = [m.group(0) for m in _SELF_HARM.finditer(cleaned)]
    harm_others = [m.group(0) for m in _HARM_OTHERS.finditer(cleaned)]
    if not self_harm and not harm_others:
        return CrisisResult(False)
    if _THIRD_PARTY.search(cleaned) and not _FIRST_PERSON.search(cleaned):
        return CrisisResult(False, matches=self_harm + harm_others)
    kind = "self_harm" if self_harm else "harm_others"
    return CrisisResult(True, kind, self_harm + harm_others)


def refers_to_help(answer: str) -> bool:
    """Whether an answer points the user to professional help or a hotline."""
    return bool(_REFERRAL.search(answer or ""))


def referral_text(hotlines: tuple[str, ...] = DEFAULT_HOTLINES) -> str:
    """The referral paragraph appended by the safety guard."""
    lines = "；".join(hotlines)
    return (
        f"你的安全是最重要的。如果你正在经历难以承受的痛苦，请现在就联系专业帮助：{lines}。"
        f"如果你有立即的危险，请马上拨打 {EMERGENCY_NUMBERS}，或请身边信任的人陪着你。"
    )


def ensure_referral(reply: str, hotlines: tuple[str, ...] = DEFAULT_HOTLINES) -> tuple[str, bool]:
    """Append the hotline referral to ``reply`` unless it already names a hotline.

    Returns the reply and whether the referral was added.
    """
    if _HOTLINE.search(reply or ""):
        return reply, False
    joiner = "\n\n" if reply.strip() else ""
    return f"{reply.rstrip()}{joiner}{referral_text(hotlines)}", True
