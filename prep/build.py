"""``prep build``: inputs -> clean, deduplicated, split LLaMA-Factory datasets + registry + report.

Accounting invariant, checked on every build: rows_in = kept + duplicates + rejected.
Outputs (all written atomically, after every input was read):
``DIR/data/NAME_alpaca.json``, ``NAME_sharegpt.json`` (train), ``NAME_test.json``
(held out), ``NAME_rejected.jsonl``, ``NAME_report.json``, ``NAME_report.md``,
and the three entries in ``DIR/dataset_info.json``.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prep import clean
from prep.dedup import DedupConfig, dedup
from prep.errors import PrepError
from prep.fsutil import atomic_write_json, atomic_write_text
from prep.prompts import DEFAULT_SYSTEM_PROMPT
from prep.readers import read_path
from prep.records import Conversation, Rejected
from prep.split import split
from prep.writers import load_registry, register, registry_entries, to_alpaca, to_sharegpt, write_json_list, write_rejected

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class BuildOptions:
    """Everything ``prep build`` needs besides its inputs."""

    name: str
    dataset_dir: Path = Path(".")
    test_size: float = 0.1
    system: str = DEFAULT_SYSTEM_PROMPT
    seed: int = 42
    limits: clean.Limits = field(default_factory=clean.Limits)
    dedup: DedupConfig = field(default_factory=DedupConfig)


def check_options(options: BuildOptions) -> None:
    """Stop before reading anything when the options cannot work."""
    if not _NAME.match(options.name) or ".." in options.name:
        raise PrepError(f"--name '{options.name}': use letters, digits, '_', '-' or '.', no path separators, at most 64 characters.")
    if not 0.0 <= options.test_size < 1.0:
        raise PrepError(f"--test-size {options.test_size}: expected a fraction from 0 up to (not including) 1.")
    load_registry(options.dataset_dir)  # a corrupt registry stops the build before anything is written


def _read_all(inputs: list[Path]) -> tuple[list[Conversation], list[Rejected]]:
    records, rejected = [], []
    for path in inputs:
        for item in read_path(Path(path)):
            (rejected if isinstance(item, Rejected) else records).append(item)
    return records, rejected


def _length_stats(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    return {"count": len(values), "min": min(values), "median": statistics.median(values), "max": max(values)}


def _report(options: BuildOptions, inputs, rows_in, kept, duplicates, rejected, train, test, counts) -> dict:
    by_source: dict[str, Counter] = {}
    for rec in kept:
        by_source.setdefault(rec.provenance.source, Counter())["kept"] += 1
    for rej in duplicates:
        by_source.setdefault(rej.provenance.source, Counter())["duplicates"] += 1
    for rej in rejected:
        by_source.setdefault(rej.provenance.source, Counter())["rejected"] += 1
    return {
        "name": options.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(p) for p in inputs],
        "rows_in": rows_in,
        "kept": len(kept),
        "duplicates": len(duplicates),
        "rejected": len(rejected),
        "train": len(train),
        "test": len(test),
        "test_size": options.test_size,
        "seed": options.seed,
        "duplicates_by_kind": dict(Counter(d.reason for d in duplicates)),
        "rejected_by_reason": dict(Counter(r.reason for r in rejected)),
        "by_source": {src: dict(c) for src, c in sorted(by_source.items())},
        "by_category": dict(Counter(rec.category or "(none)" for rec in kept).most_common()),
        "pii_replaced": {k: v for k, v in counts.items() if k != "crisis"},
        "crisis_conversations_kept": counts.get("crisis", 0),
        "lengths_chars": {
            "question": _length_stats([len(r.first_question) for r in kept]),
            "answer": _length_stats([len(r.final_answer) for r in kept]),
        },
        "dedup": {"ngram": options.dedup.ngram, "threshold": options.dedup.threshold, "num_perm": options.dedup.num_perm, "near": options.dedup.near},
    }


def _markdown(report: dict) -> str:
    def table(title: str, mapping: dict) -> str:
        rows = "".join(f"| {key} | {value} |\n" for key, value in mapping.items()) or "| (none) | 0 |\n"
        return f"\n## {title}\n\n| | count |\n|---|---|\n{rows}"

    head = (
        f"# Dataset report: {report['name']}\n\n"
        f"rows_in {report['rows_in']} = kept {report['kept']} + duplicates {report['duplicates']} + rejected {report['rejected']}\n\n"
        f"train {report['train']}, test {report['test']} (test_size {report['test_size']}, seed {report['seed']})\n"
    )
    sources = {src: ", ".join(f"{k} {v}" for k, v in c.items()) for src, c in report["by_source"].items()}
    return head + table("Sources", sources) + table("Categories (kept)", report["by_category"]) + table(
        "Rejected by reason", report["rejected_by_reason"]) + table("Duplicates by kind", report["duplicates_by_kind"]) + table(
        "Personal data replaced", report["pii_replaced"])


def build(inputs: list[Path], options: BuildOptions) -> dict:
    """Run the whole pipeline and write every output; return the report."""
    check_options(options)
    if not inputs:
        raise PrepError("no input given; expected one or more files or folders.")
    records, rejected = _read_all(inputs)
    rows_in = len(records) + len(rejected)
    counts: Counter = Counter()
    for step in (clean.normalise, lambda recs: clean.validate(recs, options.limits), clean.scrub, clean.crisis_rule):
        result = step(records)
        records, counts = result.kept, counts + result.counts
        rejected += result.rejected
    kept, duplicates = dedup(records, options.dedup)
    train, test = split(kept, options.test_size, options.seed)
    if len(kept) + len(duplicates) + len(rejected) != rows_in:
        raise AssertionError("accounting invariant broken: rows_in != kept + duplicates + rejected")
    report = _report(options, inputs, rows_in, kept, duplicates, rejected, train, test, counts)
    _write(options, train, test, duplicates + rejected, report)
    return report


def _write(options: BuildOptions, train, test, not_kept, report) -> None:
    data_dir = Path(options.dataset_dir) / "data"
    name = options.name
    write_json_list(data_dir / f"{name}_alpaca.json", [to_alpaca(r, options.system) for r in train])
    write_json_list(data_dir / f"{name}_sharegpt.json", [to_sharegpt(r, options.system) for r in train])
    write_json_list(data_dir / f"{name}_test.json", [to_alpaca(r, options.system) for r in test])
    write_rejected(data_dir / f"{name}_rejected.jsonl", not_kept)
    atomic_write_json(data_dir / f"{name}_report.json", report)
    atomic_write_text(data_dir / f"{name}_report.md", _markdown(report))
    register(options.dataset_dir, registry_entries(name))
