"""The canonical record every reader produces and every writer consumes.

A :class:`Conversation` is one training example: an optional system prompt and
alternating user/assistant turns, with the provenance that says where it came
from. A :class:`Rejected` is a row that did not make it, with its reason and
source location, so that every input row is accounted for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

Role = Literal["user", "assistant"]

# Categories with a meaning to the pipeline; other categories are free-form themes.
CATEGORY_OFF_TOPIC = "非心理问题"
CATEGORY_CRISIS = "危机干预"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation."""

    role: Role
    content: str


@dataclass
class Provenance:
    """Where a record came from: enough to find the row again and to judge it."""

    source: str  # file path as given by the user
    location: str  # "row 12", "line 7", "item 3", "conversation 2"
    origin: str = "labelled"  # labelled | distilled | feedback
    annotator: str | None = None
    teacher: str | None = None
    template_id: str | None = None
    request_id: str | None = None
    created: str | None = None  # ISO time: a review's reviewed_at, a journal line's time, else the file's mtime

    def created_timestamp(self) -> float | None:
        """``created`` in seconds since the epoch; None when missing or not an ISO time (a hand-edited one)."""
        try:
            return datetime.fromisoformat(self.created).timestamp() if self.created else None
        except (TypeError, ValueError):
            return None


@dataclass
class Conversation:
    """A canonical training example."""

    turns: list[Turn]
    provenance: Provenance
    system: str | None = None
    category: str | None = None
    record_id: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def first_question(self) -> str:
        """The first user message (the question a test split is keyed on)."""
        return next((t.content for t in self.turns if t.role == "user"), "")

    @property
    def final_answer(self) -> str:
        """The last assistant message (the response a model is trained on)."""
        return next((t.content for t in reversed(self.turns) if t.role == "assistant"), "")

    def user_text(self) -> str:
        """All user messages joined, for detectors that look at what the user said."""
        return "\n".join(t.content for t in self.turns if t.role == "user")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Rejected:
    """A row that was not kept, with why and where."""

    reason: str
    provenance: Provenance
    detail: str = ""
    raw: str | None = None
    twin: Provenance | None = None  # a duplicate's kept record, a withdrawn answer's withdrawal

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["raw"] is not None and len(data["raw"]) > 2000:
            data["raw"] = data["raw"][:2000] + "…"
        return data
