"""The readable side of a build report: length statistics, Markdown, and a histogram PNG."""

from __future__ import annotations

import io
import statistics
from pathlib import Path

from prep.fsutil import atomic_write_bytes
from prep.records import Conversation


def length_stats(values: list[int]) -> dict:
    """Count, min, median, p95, max and mean of a list of lengths."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
        "mean": round(statistics.fmean(ordered), 1),
    }


def _table(title: str, mapping: dict, header: str = "count") -> str:
    rows = "".join(f"| {key} | {value} |\n" for key, value in mapping.items()) or "| (none) | 0 |\n"
    return f"\n## {title}\n\n| | {header} |\n|---|---|\n{rows}"


def render_markdown(report: dict) -> str:
    """The report as Markdown: accounting first, then breakdowns."""
    head = (
        f"# Dataset report: {report['name']}\n\n"
        f"**rows_in {report['rows_in']} = kept {report['kept']} + duplicates {report['duplicates']} + rejected {report['rejected']}**\n\n"
        f"train {report['train']}, test {report['test']} (test_size {report['test_size']}, seed {report['seed']}); "
        f"crisis conversations kept: {report['crisis_conversations_kept']}\n\n"
        f"![lengths]({report['name']}_lengths.png)\n"
    )
    sources = {src: ", ".join(f"{k} {v}" for k, v in c.items()) for src, c in report["by_source"].items()}
    lengths = {kind: ", ".join(f"{k} {v}" for k, v in stats.items()) for kind, stats in report["lengths"].items()}
    agreement = report.get("agreement") or {}
    agreement_rows = {kind: f"{agreement[kind]['method']} kappa {agreement[kind]['kappa']} over {agreement[kind]['items']} items"
                      for kind in ("category", "verdict") if isinstance(agreement.get(kind), dict) and agreement[kind]["method"]}
    if agreement.get("items"):
        agreement_rows["conflicts"] = agreement["conflicts"]
    return (head + _table("Sources", sources, "rows") + _table("Categories (kept)", report["by_category"])
            + _table("Rejected by reason", report["rejected_by_reason"]) + _table("Duplicates by kind", report["duplicates_by_kind"])
            + _table("Personal data replaced", report["pii_replaced"]) + _table("Lengths", lengths, "statistics")
            + _table("Annotator agreement", agreement_rows, "value"))


def write_histogram(path: Path, records: list[Conversation], tokens: list[int] | None) -> None:
    """Histograms of question and answer length in characters (and tokens when counted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("question (chars)", [len(r.first_question) for r in records]), ("answer (chars)", [len(r.final_answer) for r in records])]
    if tokens is not None:
        series.append(("conversation (tokens)", tokens))
    figure, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.2))
    for axis, (title, values) in zip(axes, series):
        axis.hist(values or [0], bins=40, color="#4C72B0")
        axis.set_title(title)
        axis.set_ylabel("conversations")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
