"""The ``prep`` command line: each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from prep.errors import PrepError, file_error_sentence
from prep.prompts import DEFAULT_SYSTEM_PROMPT
from prep.resources import bundled

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prepare, build and evaluate counselling datasets for LLaMA-Factory.")


@app.command("build")
def build_command(
    inputs: Annotated[list[Path], typer.Argument(help="Input files or folders (CSV/TSV/XLSX/XLS/JSON/JSONL/TXT).")],
    name: Annotated[str, typer.Option("--name", help="Dataset name: files data/NAME_*.json and registry entries NAME_*.")],
    dataset_dir: Annotated[Path, typer.Option("--dataset-dir", help="Folder holding dataset_info.json and data/.")] = Path("."),
    test_size: Annotated[float, typer.Option("--test-size", help="Fraction held out as NAME_test (never trained on).")] = 0.1,
    system: Annotated[str, typer.Option("--system", help="System prompt for rows without one.")] = DEFAULT_SYSTEM_PROMPT,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the deterministic split.")] = 42,
    near_dedup: Annotated[bool, typer.Option("--near-dedup/--no-near-dedup", help="MinHash near-duplicate removal.")] = True,
    tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="Local tokenizer or model folder: reject rows longer than --cutoff-len tokens.")] = None,
    cutoff_len: Annotated[Optional[int], typer.Option("--cutoff-len", min=1, help="LLaMA-Factory's cutoff_len (with --tokenizer; default 2048).")] = None,
) -> None:
    """Read, clean, deduplicate, split and register a dataset."""
    from prep.build import BuildOptions, build
    from prep.dedup import DedupConfig

    if cutoff_len is not None and tokenizer is None:  # (it was ignored: no row was checked against it)
        raise PrepError(f"--cutoff-len {cutoff_len} needs --tokenizer DIR, the tokenizer that counts the tokens.")
    options = BuildOptions(name=name, dataset_dir=dataset_dir, test_size=test_size, system=system, seed=seed,
                           dedup=DedupConfig(near=near_dedup), tokenizer=tokenizer, cutoff_len=cutoff_len or 2048)
    report = build(inputs, options)
    reasons = ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()) or "none"
    typer.echo(
        f"{name}: rows_in {report['rows_in']} = kept {report['kept']} + duplicates {report['duplicates']} "
        f"+ rejected {report['rejected']} (reasons: {reasons})\n"
        f"train {report['train']} -> {dataset_dir / 'data' / (name + '_alpaca.json')}, "
        f"test {report['test']} -> {dataset_dir / 'data' / (name + '_test.json')}\n"
        f"registered {name}_alpaca, {name}_sharegpt{f', {name}_test' if report['test'] else ''} in {dataset_dir / 'dataset_info.json'}"
    )
    for warning in report["warnings"]:
        typer.echo(f"warning: {warning}", err=True)


@app.command("tiny-model")
def tiny_model_command(
    out: Annotated[Path, typer.Argument(help="Output folder for the tiny model.")],
    inputs: Annotated[Optional[list[Path]], typer.Option("--data", help="Text to train the tokenizer on.")] = None,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 3000,
    hidden_size: Annotated[int, typer.Option(help="Hidden size.")] = 64,
    layers: Annotated[int, typer.Option(help="Number of layers.")] = 2,
    seed: Annotated[int, typer.Option(help="Weight initialisation seed.")] = 0,
) -> None:
    """Build a tiny random Llama with a Llama-3-style tokenizer, for CPU demos and tests."""
    from prep.tiny_model import build_tiny_model

    data = inputs or [bundled("seed")]
    path = build_tiny_model(out, data, vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, seed=seed)
    typer.echo(f"tiny model written to {path}")


@app.command("distill")
def distill_command(
    out: Annotated[Path, typer.Option("--out", help="Journal file (JSONL); re-running the same command resumes it.")],
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL or OpenAI).")] = None,
    model: Annotated[str, typer.Option("--model", help="Teacher model name.")] = "gpt-4o-mini",
    requests: Annotated[int, typer.Option("--requests", help="Number of requests in the plan.")] = 10,
    pairs_per_request: Annotated[int, typer.Option("--pairs-per-request", help="Q&A pairs (or dialogues) asked per request.")] = 20,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight at once.")] = 8,
    processes: Annotated[Optional[int], typer.Option("--processes", help="Client processes sharing the requests in flight (default: one per 64).")] = None,
    topics: Annotated[Optional[Path], typer.Option("--topics", help="Topic grid YAML (areas, concerns, personas); default data/topics/topics.yaml.")] = None,
    multi_turn_ratio: Annotated[float, typer.Option("--multi-turn-ratio", help="Share of requests asking for multi-turn dialogues.")] = 0.0,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.9,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the plan (topics, personas, modes).")] = 0,
    max_cost: Annotated[Optional[float], typer.Option("--max-cost", help="Stop starting requests past this estimated cost (USD).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Completion token limit per request.")] = 4096,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before one request times out.")] = 120.0,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="Tries per request before it is journalled as failed.")] = 6,
    price_in: Annotated[float, typer.Option("--price-in", help="USD per million prompt tokens.")] = 0.15,
    price_out: Annotated[float, typer.Option("--price-out", help="USD per million completion tokens.")] = 0.60,
    batch: Annotated[bool, typer.Option("--batch", help="Send the plan through the OpenAI Batch API (half price, answers within 24 h); re-run to resume polling.")] = False,
    poll_interval: Annotated[float, typer.Option("--poll-interval", help="--batch: seconds between status checks.")] = 30.0,
) -> None:
    """Distil counselling Q&A from a teacher LLM into a resumable journal."""
    from prep.distill import DEFAULT_TOPICS, DistillConfig, distill

    config = DistillConfig(out=out, base_url=base_url, model=model, requests=requests, pairs_per_request=pairs_per_request,
                           concurrency=concurrency, topics=topics or DEFAULT_TOPICS, multi_turn_ratio=multi_turn_ratio, temperature=temperature,
                           seed=seed, max_cost=max_cost, max_tokens=max_tokens, timeout_s=timeout, max_attempts=max_attempts,
                           price_in_per_m=price_in, price_out_per_m=price_out, batch=batch, poll_s=poll_interval,
                           processes=processes)
    try:
        stats = distill(config)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: every answer so far is in {out}; run the same command to resume.", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"distill: {stats.ok} ok, {stats.truncated} truncated, {stats.parse_error} parse_error, {stats.failed} failed, "
        f"{stats.skipped} already done, {stats.retries} retries; {stats.pairs} conversations; "
        f"tokens {stats.prompt_tokens} in / {stats.completion_tokens} out, est. ${stats.cost(config):.4f}; "
        f"{stats.seconds:.1f} s -> {out}"
    )
    if stats.stopped:
        typer.echo(f"error: stopped early: {stats.stopped}", err=True)
        raise typer.Exit(3)
    if stats.failed and not (stats.ok or stats.truncated or stats.parse_error or stats.skipped):
        from prep.distill import read_journal

        first = next((e.get("error") for e in read_journal(out).values() if e.get("status") == "failed" and e.get("error")), "")
        typer.echo(f"error: every request failed ({first[:300] or 'see the journal'}); fix that and run the same command again.", err=True)
        raise typer.Exit(3)


@app.command("run-check")
def run_check_command(
    config: Annotated[Path, typer.Option("--config", help="LLaMA-Factory training YAML.")],
    output: Annotated[Optional[Path], typer.Option("--output", help="Run folder (default: parent of the config's output_dir).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model folder or hub id overriding the config.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Comma-separated dataset names overriding the config.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a finished run.")] = False,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Write run_config.yaml and the manifest.")] = False,
    command: Annotated[str, typer.Option("--command", help="The command line, recorded in the manifest.")] = "",
    data_built_first: Annotated[Optional[str], typer.Option("--data-built-first", help="Leave out datasets whose names start with this (built before training).")] = None,
    model_built_first: Annotated[bool, typer.Option("--model-built-first", help="Leave out the model check (built before training).")] = False,
) -> None:
    """Check a training run before it starts; print the run folder (and write its manifest with --write)."""
    from prep.runs import check_run, resolve, start_manifest

    resolved, run_dir = resolve(config, output, model, dataset, resume)
    for warning in check_run(resolved, run_dir, resume, force, data_built_first, model_built_first):
        typer.echo(f"warning: {warning}", err=True)
    if write:
        start_manifest(resolved, run_dir, command)
    else:
        import yaml

        typer.echo(yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False), err=True)
    typer.echo(run_dir)


@app.command("run-finish")
def run_finish_command(
    run_dir: Annotated[Path, typer.Argument(help="Run folder.")],
    exit_code: Annotated[int, typer.Option("--exit-code")] = 0,
    stage: Annotated[str, typer.Option("--stage")] = "train",
) -> None:
    """Record the end of a run in its manifest (and, for a failed or interrupted run, print how to go on)."""
    from prep.runs import finish_manifest, rerun_hint

    finish_manifest(run_dir, exit_code, stage)
    if exit_code:
        typer.echo(rerun_hint(run_dir))


@app.command("report-run")
def report_run_command(run_dir: Annotated[Path, typer.Argument(help="Run folder (or a LoRA output folder).")]) -> None:
    """Summarise a run's trainer log: losses, best checkpoint, tokens/s, wall time, loss plots (writes report.md)."""
    from prep.runs import report_run

    typer.echo(report_run(run_dir))


@app.command("eval")
def eval_command(
    out: Annotated[Path, typer.Option("--out", help="Evaluation folder (candidates.jsonl, metrics.json, report).")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Merged model folder, run locally.")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="OpenAI-compatible endpoint instead of --model.")] = None,
    endpoint_model: Annotated[str, typer.Option("--endpoint-model", help="Model name at --base-url.")] = "default",
    plan: Annotated[Optional[Path], typer.Option("--plan", help="Test plan CSV (default data/tests/test_plan.csv).")] = None,
    test_split: Annotated[Optional[Path], typer.Option("--test-split", help="Held-out NAME_test.json from prep build.")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Answers per question (K).")] = 1,
    limit: Annotated[Optional[int], typer.Option("--limit", help="At most this many cases of each kind.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 512,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.9,
    judge_url: Annotated[Optional[str], typer.Option("--judge-base-url", help="OpenAI-compatible endpoint of an LLM judge.")] = None,
    judge_model: Annotated[Optional[str], typer.Option("--judge-model", help="Judge model name.")] = None,
    label: Annotated[str, typer.Option("--label", help="Name of this evaluation in the trend.")] = "",
    compare: Annotated[Optional[Path], typer.Option("--compare", help="Another evaluation folder to show side by side (e.g. the base model).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    system: Annotated[str, typer.Option("--system", help="System prompt the questions are asked with: the one the model "
                                        "was trained with (prep build --system; default the seed's).")] = DEFAULT_SYSTEM_PROMPT,
) -> None:
    """Evaluate a model on the test plan: refusal P/R/F1, crisis referral, ROUGE-L/BLEU, judge, latency."""
    from prep.eval_report import build_report, read_compare
    from prep.evaluate import DEFAULT_PLAN, EndpointModel, EvalOptions, LocalModel, load_plan, local_model_info, run_eval
    from prep.judge import Judge

    if (model is None) == (base_url is None):
        raise PrepError("give exactly one of --model DIR or --base-url URL.")
    if bool(judge_url) != bool(judge_model):
        raise PrepError("give --judge-base-url and --judge-model together (the judge needs both), or neither.")
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out}: is a file; expected a folder for candidates.jsonl, metrics.json and the report.")
    if compare is not None:
        read_compare(compare, out)  # checked before the model runs, not after
    cases = load_plan(plan or DEFAULT_PLAN, test_split, limit)
    generation = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                  **({"system": system} if system != DEFAULT_SYSTEM_PROMPT else {})}  # another prompt: other answers
    if model is not None:
        runner = LocalModel(model, system, max_new_tokens, temperature, top_p)
        info = local_model_info(model)
    else:
        runner = EndpointModel(base_url, endpoint_model, system, max_new_tokens, temperature, top_p)
        info = {"endpoint": base_url, "model": endpoint_model}
    judge = Judge(judge_url, judge_model) if judge_url and judge_model else None
    summary = run_eval(runner, cases, EvalOptions(out, samples, label, seed, judge, generation, info))
    md, html = build_report(out, compare)
    m = summary["metrics"]
    if m.get("judge_failed"):
        failed = m["judge_failed"]
        typer.echo(f"warning: the judge could not score {failed['replies']} replies (first: {failed['first_error']}); "
                   f"the judge's means are over {(m.get('judge') or {}).get('judged', 0)} replies.", err=True)
    if m.get("trained_on_cases"):
        typer.echo(f"warning: {m['trained_on_cases']} of the {summary['cases']} questions {'is' if m['trained_on_cases'] == 1 else 'are'} in this model's training data (reviewed "
                   f"answers fed back?): ROUGE-L/BLEU-4 on them measure recall; over the others {shown(m['rouge_l_unseen'])} / "
                   f"{shown(m['bleu4_unseen'])}.", err=True)
    typer.echo(f"{summary['label']}: {summary['cases']} cases x {samples}; refusal F1 {shown(m['refusal']['f1'])}, crisis referral "
               f"{shown(m['crisis_referral_rate'])} (guarded {shown(m['crisis_referral_rate_guarded'])}), ROUGE-L {shown(m['rouge_l'])}, "
               f"BLEU-4 {shown(m['bleu4'])}, p50 latency {shown(m['latency_p50_s'])} s\nreport: {md} and {html}")


def shown(value: object) -> object:
    """A metric for the terminal: n/a where it could not be computed (no case for it), as the report's gap."""
    return "n/a" if value is None else value


@app.command("review")
def review_command(
    candidates: Annotated[Path, typer.Argument(help="candidates.jsonl written by prep eval.")],
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who reviews (recorded with every accepted answer).")],
    accept: Annotated[Optional[Path], typer.Option("--accept", help='Decisions JSONL instead of asking, a line per case: '
                                                   '{"case_id": "C001", "accept": [0, 2]}, {"case_id": "C002", "correction": "..."}, '
                                                   '{"case_id": "C003", "skip": true} or {"case_id": "C004", "withdraw": true} '
                                                   '(takes back the answers earlier reviews kept for that question).')] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Feedback folder (default: the checkout's data/feedback, "
                                                    "or ./data/feedback when prep is installed).")] = None,
) -> None:
    """Pick good answers or write corrections; accepted answers become training data (provenance feedback)."""
    from prep.review import FEEDBACK_DIR, review

    path, counts = review(candidates, reviewer, accept, out_dir or FEEDBACK_DIR)
    typer.echo(("review interrupted: the decisions so far are kept. " if counts["interrupted"] else "")
               + f"review of {sum(counts[k] for k in ('accepted', 'corrected', 'withdrawn', 'skipped'))} cases: {counts['accepted']} accepted "
               + f"({counts['answers']} answer{'s' * (counts['answers'] != 1)}), {counts['corrected']} corrected, "
               + (f"{counts['withdrawn']} withdrawn, " if counts["withdrawn"] else "") + f"{counts['skipped']} skipped"
               + (f" (the hotline referral added to {counts['referral_added']} corrections of a crisis)" if counts["referral_added"] else "")
               + (f" -> {path}" if path else " (nothing written)"))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except PrepError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except OSError as err:
        if err.filename is None:  # not about a path (a network error is the commands' own to report)
            raise
        typer.echo(f"error: {file_error_sentence(err)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as err:  # Typer turns Ctrl-C into exit code 130, silently
        if err.code == 130:
            _interrupted()
        raise


def _interrupted() -> None:
    typer.echo("interrupted: nothing is left half-written; prep distill and prep eval go on from where they stopped "
               "when the same command is run again.", err=True)
    sys.exit(130)


if __name__ == "__main__":
    main()
