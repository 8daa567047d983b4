"""``prep build``: inputs -> clean, deduplicated, split LLaMA-Factory datasets + registry + report.

Pipeline: read -> reviews' withdrawals -> normalise -> validate -> scrub PII -> crisis rule (these four in
worker processes for large inputs) -> token limit (when a tokenizer is given) ->
annotator agreement -> dedup -> split.
Accounting invariant, checked on every build: rows_in = kept + duplicates + rejected.
Outputs, all written atomically after every input was read:
``DIR/data/NAME_alpaca.json``, ``NAME_sharegpt.json`` (train), ``NAME_test.json``
(held out), ``NAME_rejected.jsonl``, ``NAME_conflicts.jsonl``,
``NAME_report.json``, ``NAME_report.md``, ``NAME_lengths.png``, and the three
entries in ``DIR/dataset_info.json``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from prep import clean
from prep.agreement import resolve
from prep.dedup import DedupConfig, dedup, near_groups
from prep.errors import PrepError
from prep.feedback import apply_withdrawals, overruled_by_labelled, undated_withdrawals
from prep.fsutil import all_or_nothing, atomic_write_json, atomic_write_text
from prep.pii import scrub_pii
from prep.prompts import DEFAULT_SYSTEM_PROMPT
from prep.readers import read_path, supported_files
from prep.records import Conversation, Rejected
from prep.report import length_stats, render_markdown, write_histogram
from prep.split import share_warning, split, split_groups
from prep.writers import load_registry, register, registry_entries, to_alpaca, to_sharegpt, write_json_list, write_jsonl

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
    tokenizer: Path | None = None  # a local tokenizer folder: enables the token limit
    cutoff_len: int = 2048


@dataclass
class _State:
    """Records still in the pipeline and everything accounted for so far."""

    records: list[Conversation]
    rejected: list[Rejected]
    counts: Counter = field(default_factory=Counter)


def check_options(options: BuildOptions, inputs: list[Path]) -> None:
    """Stop before reading anything when the options cannot work."""
    if not _NAME.match(options.name) or ".." in options.name:
        raise PrepError(f"--name '{options.name}': use letters, digits, '_', '-' or '.', no path separators, at most 64 characters.")
    if not 0.0 <= options.test_size < 1.0:
        raise PrepError(f"--test-size {options.test_size}: expected a fraction from 0 up to (not including) 1.")
    if not inputs:
        raise PrepError("no input given; expected one or more files or folders.")
    if options.tokenizer is not None and not (Path(options.tokenizer) / "tokenizer_config.json").exists():
        raise PrepError(f"--tokenizer {options.tokenizer}: no tokenizer_config.json there; expected a local model or tokenizer folder.")
    load_registry(options.dataset_dir)  # a corrupt registry stops the build before anything is written


def _read_all(inputs: list[Path]) -> _State:
    state = _State([], [])
    files = [file for path in inputs for file in supported_files(Path(path))]
    for file in tqdm(files, desc="read", unit="file", disable=None, leave=False):
        for item in read_path(file):
            (state.rejected if isinstance(item, Rejected) else state.records).append(item)
    return state


def _apply(state: _State, result: clean.StepResult) -> None:
    state.records = result.kept
    state.rejected += result.rejected
    state.counts += result.counts


def _token_counts(records: list[Conversation], tokenizer_dir: Path | None, system: str) -> list[int] | None:
    """Each conversation's length in tokens as it will be trained: in the tokenizer's chat template (Llama-3's is
    LLaMA-Factory's llama3 template) with the system prompt the writers give it."""
    if tokenizer_dir is None:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except Exception as err:  # an incomplete or corrupt folder: transformers raises ValueError, OSError, JSONDecodeError...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PrepError(f"--tokenizer {tokenizer_dir}: cannot be loaded ({reason[:200]}); expected a complete tokenizer folder "
                        "(tokenizer_config.json with tokenizer.json or tokenizer.model).") from None
    messages = [[{"role": "system", "content": rec.system or system}] + [{"role": t.role, "content": t.content} for t in rec.turns]
                for rec in records]
    if tokenizer.chat_template:
        try:
            texts = [tokenizer.apply_chat_template(conversation, tokenize=False) for conversation in messages]
        except Exception as err:  # jinja2's TemplateError, or a template's own raise_exception
            raise PrepError(f"--tokenizer {tokenizer_dir}: its chat template refuses a conversation with a system prompt ({err}); "
                            "expected a template with a system role, such as Llama-3's.") from None
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    texts = ["\n".join(message["content"] for message in conversation) for conversation in messages]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    # No chat template: Llama-3's overhead, header and end tokens around every message, plus the first token.
    return [len(ids) + 5 * len(conversation) + 1 for ids, conversation in zip(encoded, messages)]


def build(inputs: list[Path], options: BuildOptions) -> dict:
    """Run the whole pipeline and write every output; return the report."""
    check_options(options, inputs)
    state = _read_all(inputs)
    rows_in = len(state.records) + len(state.rejected)
    undated = undated_withdrawals(state.records)
    _apply(state, apply_withdrawals(state.records))
    _apply(state, clean.run_steps(state.records, options.limits))
    tokens = _token_counts(state.records, options.tokenizer, options.system)
    if tokens is not None:
        _apply(state, clean.token_limit(state.records, tokens, options.cutoff_len))
    agreement = resolve(state.records)
    state.records, state.rejected = agreement.kept, state.rejected + agreement.rejected
    deduped = dedup(state.records, options.dedup)
    kept = deduped.kept
    hashes = deduped.kept_hashes
    near = near_groups(hashes, options.dedup.split_threshold, options.dedup.num_perm) if hashes is not None and len(hashes) else None
    groups = split_groups(kept, near)
    train, test = split(kept, options.test_size, options.seed, groups)
    # Reviewed answers first: LLaMA-Factory's max_samples trains a dataset's first rows (training shuffles anyway).
    train = sorted(train, key=lambda rec: rec.provenance.origin != "feedback")
    if len(kept) + len(deduped.duplicates) + len(state.rejected) != rows_in:
        raise AssertionError("accounting invariant broken: rows_in != kept + duplicates + rejected")
    kept_tokens = [rec.meta["tokens"] for rec in kept] if tokens is not None else None  # counted by token_limit
    report = _report(options, inputs, rows_in, kept, deduped.duplicates, state, train, test, agreement.stats, kept_tokens)
    if not train:
        raise PrepError(_nothing_to_train(options, report))
    warning = share_warning(len(kept), len(test), options.test_size, groups)
    report["warnings"] = [text for text in (warning, undated) if text]
    overruled = overruled_by_labelled(deduped.duplicates)
    if overruled:
        report["warnings"].append(f"{overruled} reviewed answer{'s were' if overruled > 1 else ' was'} not kept: the question is a "
                                  f"hand-labelled row's, which wins (a held-out item stays held out); see {options.name}_rejected.jsonl.")
    if not test:
        report["warnings"].append(f"no row held out for {options.name}_test; it is not registered (LLaMA-Factory "
                                  "refuses an empty dataset).")
    _write(options, train, test, deduped.duplicates + state.rejected, agreement.conflicts, report, kept, kept_tokens)
    return report


def _report(options, inputs, rows_in, kept, duplicates, state, train, test, agreement, tokens) -> dict:
    by_source: dict[str, Counter] = {}
    for rec in kept:
        by_source.setdefault(rec.provenance.source, Counter())["kept"] += 1
    for item in duplicates:
        by_source.setdefault(item.provenance.source, Counter())["duplicates"] += 1
    for item in state.rejected:
        by_source.setdefault(item.provenance.source, Counter())["rejected"] += 1
    lengths = {
        "question_chars": length_stats([len(r.first_question) for r in kept]),
        "answer_chars": length_stats([len(r.final_answer) for r in kept]),
    }
    if tokens is not None:
        lengths["tokens"] = length_stats(tokens)
    return {
        "name": options.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [str(p) for p in inputs],
        "rows_in": rows_in,
        "kept": len(kept),
        "duplicates": len(duplicates),
        "rejected": len(state.rejected),
        "train": len(train),
        "test": len(test),
        "test_size": options.test_size,
        "seed": options.seed,
        "duplicates_by_kind": dict(Counter(d.reason for d in duplicates)),
        "rejected_by_reason": dict(Counter(r.reason for r in state.rejected)),
        "by_source": {src: dict(c) for src, c in sorted(by_source.items())},
        "by_category": dict(Counter(rec.category or "(none)" for rec in kept).most_common()),
        "by_origin": dict(Counter(rec.provenance.origin for rec in kept)),
        "pii_replaced": dict(state.counts),
        "crisis_conversations_kept": sum(bool(rec.meta.get("crisis")) for rec in kept),
        "agreement": agreement,
        "lengths": lengths,
        "dedup": {"ngram": options.dedup.ngram, "threshold": options.dedup.threshold,
                  "split_threshold": options.dedup.split_threshold, "num_perm": options.dedup.num_perm, "near": options.dedup.near},
        "token_limit": {"tokenizer": str(options.tokenizer), "cutoff_len": options.cutoff_len} if options.tokenizer else None,
    }


def _scrubbed(row: dict) -> dict:
    return dict(row, raw=scrub_pii(row["raw"])[0]) if row.get("raw") else row


def _nothing_to_train(options, report: dict) -> str:
    reasons = ", ".join(f"{reason} {count}" for reason, count in report["rejected_by_reason"].items()) or "none"
    why = (f"all {report['kept']} rows kept went to the test split (--test-size {options.test_size}); use more rows or "
           "--test-size 0" if report["kept"] else
           f"none of the {report['rows_in']} rows read was kept (duplicates {report['duplicates']}, rejected "
           f"{report['rejected']}: {reasons})")
    return (f"no row left to train {options.name} on: {why}. Nothing was written: {options.name}'s earlier outputs and "
            "registry entries are kept.")


def _write(options, train, test, not_kept, conflicts, report, kept, tokens) -> None:
    """Every output and the registry entries, all replaced together or, on any failure, none."""
    try:
        with all_or_nothing():
            _write_outputs(options, train, test, not_kept, conflicts, report, kept, tokens)
    except OSError as err:  # a file where the data folder should be, a folder in an output's place, a full disk
        where = f" ({err.filename})" if err.filename else ""
        raise PrepError(f"cannot write the outputs under {options.dataset_dir}: {err.strerror or err}{where}; expected a "
                        f"writable folder. Nothing was replaced: {options.name}'s earlier outputs are kept.") from None


def _write_outputs(options, train, test, not_kept, conflicts, report, kept, tokens) -> None:
    data_dir = Path(options.dataset_dir) / "data"
    name = options.name
    write_json_list(data_dir / f"{name}_alpaca.json", [to_alpaca(r, options.system) for r in train])
    write_json_list(data_dir / f"{name}_sharegpt.json", [to_sharegpt(r, options.system) for r in train])
    write_json_list(data_dir / f"{name}_test.json", [to_alpaca(r, options.system) for r in test])
    # Rows rejected before the scrub step (unreadable, invalid) still hold their raw text: scrub it here too.
    write_jsonl(data_dir / f"{name}_rejected.jsonl", [_scrubbed(r.to_dict()) for r in not_kept])
    write_jsonl(data_dir / f"{name}_conflicts.jsonl", conflicts)
    write_histogram(data_dir / f"{name}_lengths.png", kept, tokens)
    atomic_write_json(data_dir / f"{name}_report.json", report)
    atomic_write_text(data_dir / f"{name}_report.md", render_markdown(report))
    entries = registry_entries(name)
    empty = [] if test else [f"{name}_test"]  # LLaMA-Factory refuses an empty dataset: not registered (any more)
    register(options.dataset_dir, {key: entry for key, entry in entries.items() if key not in empty}, remove=empty)
