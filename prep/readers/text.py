"""Reader for raw teacher output in the ``<s>Human: ...</s><s>Assistant: ...</s>`` text format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prep.readers.decode import read_text_file
from prep.records import Conversation, Provenance, Rejected
from prep.textformat import parse_text


def read_text(path: Path, origin: str = "labelled") -> Iterator[Conversation | Rejected]:
    """Yield one record per Human/Assistant pair found in a ``.txt`` file."""
    text = read_text_file(path)
    for index, parsed in enumerate(parse_text(text), start=1):
        provenance = Provenance(source=str(path), location=f"conversation {index}", origin=origin)
        if parsed.error:
            yield Rejected(parsed.error, provenance, raw=parsed.raw)
        else:
            yield Conversation(parsed.turns, provenance, system=parsed.system)
