"""Reader for raw teacher output in the ``<s>Human: ...</s><s>Assistant: ...</s>`` text format.

A file of multi-turn dialogues separated by ``###`` lines (as the multi-turn distill template asks: each part opens
with a role label and parses whole) gives one conversation per dialogue; otherwise every Human/Assistant pair is
its own conversation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prep.readers.decode import read_text_file
from prep.records import Conversation, Provenance, Rejected
from prep.textformat import as_dialogue_file, parse_text


def read_text(path: Path, origin: str = "labelled") -> Iterator[Conversation | Rejected]:
    """Yield one record per dialogue (``###``-separated file) or per Human/Assistant pair in a ``.txt`` file."""
    text = read_text_file(path)
    found = as_dialogue_file(text) or parse_text(text)
    for index, parsed in enumerate(found, start=1):
        provenance = Provenance(source=str(path), location=f"conversation {index}", origin=origin)
        if parsed.error:
            yield Rejected(parsed.error, provenance, raw=parsed.raw)
        else:
            yield Conversation(parsed.turns, provenance, system=parsed.system)
