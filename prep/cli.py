"""The ``prep`` command line: each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from prep.errors import PrepError
from prep.prompts import DEFAULT_SYSTEM_PROMPT

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
) -> None:
    """Read, clean, deduplicate, split and register a dataset."""
    from prep.build import BuildOptions, build
    from prep.dedup import DedupConfig

    options = BuildOptions(name=name, dataset_dir=dataset_dir, test_size=test_size, system=system, seed=seed,
                           dedup=DedupConfig(near=near_dedup))
    report = build(inputs, options)
    reasons = ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()) or "none"
    typer.echo(
        f"{name}: rows_in {report['rows_in']} = kept {report['kept']} + duplicates {report['duplicates']} "
        f"+ rejected {report['rejected']} (reasons: {reasons})\n"
        f"train {report['train']} -> {dataset_dir / 'data' / (name + '_alpaca.json')}, "
        f"test {report['test']} -> {dataset_dir / 'data' / (name + '_test.json')}\n"
        f"registered {name}_alpaca, {name}_sharegpt, {name}_test in {dataset_dir / 'dataset_info.json'}"
    )


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

    data = inputs or [Path(__file__).resolve().parent.parent / "data" / "seed"]
    path = build_tiny_model(out, data, vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, seed=seed)
    typer.echo(f"tiny model written to {path}")


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except PrepError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
