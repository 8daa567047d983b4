"""The evaluation report: Markdown and a self-contained HTML page with plots.

Metric bars for this evaluation (and a comparison, e.g. the base model, side by
side), the training loss curves of the run the model came from, and the trend
of every past evaluation read from the append-only history file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

from prep.errors import PrepError
from prep.evaluate import HISTORY_FILE, read_history
from prep.fsutil import atomic_write_text

BAR_METRICS = [("refusal F1", ("refusal", "f1")), ("crisis referral", ("crisis_referral_rate",)),
               ("crisis referral + guard", ("crisis_referral_rate_guarded",)), ("ROUGE-L", ("rouge_l",)), ("BLEU-4", ("bleu4",))]


TREND_COLUMNS = [("refusal", "f1"), ("crisis_referral_rate",), ("rouge_l",), ("bleu4",), ("latency_p50_s",)]


def _get(metrics: dict, path: tuple) -> float | None:
    """A metric, or None where it could not be computed (no crisis case, no reference): shown as a gap, not 0."""
    value = metrics
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _plotted(value: float | None) -> float:
    return float("nan") if value is None else value


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _plots(current: dict, compare: dict | None, history: list[dict]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    figure, axis = plt.subplots(figsize=(7, 3.2))
    names = [n for n, _ in BAR_METRICS]
    runs = [(current["label"], current["metrics"])] + ([(compare["label"], compare["metrics"])] if compare else [])
    width = 0.8 / len(runs)
    for index, (label, values) in enumerate(runs):
        axis.bar([i + index * width for i in range(len(names))], [_plotted(_get(values, p)) for _, p in BAR_METRICS], width, label=label)
    axis.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    plots["metrics.png"] = _png(figure)
    plt.close(figure)
    if len(history) >= 1:
        figure, axis = plt.subplots(figsize=(7, 3.2))
        for name, path in BAR_METRICS:
            axis.plot(range(1, len(history) + 1), [_plotted(_get(h["metrics"], path)) for h in history], marker="o", label=name)
        axis.set_xticks(range(1, len(history) + 1), [h["label"] for h in history], rotation=30, fontsize=7)
        axis.set_ylim(0, 1.05)
        axis.set_title("trend across evaluations")
        axis.legend(fontsize=7)
        plots["trend.png"] = _png(figure)
        plt.close(figure)
    return plots


def _run_dir_of(model_info: dict) -> Path | None:
    model_dir = model_info.get("model_dir")
    if model_dir and Path(model_dir).name == "merged" and (Path(model_dir).parent / "lora").is_dir():
        return Path(model_dir).parent
    return None


def build_report(eval_dir: Path, compare_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html into ``eval_dir``; return their paths."""
    eval_dir = Path(eval_dir)
    current = read_metrics(eval_dir, "evaluation")
    compare = read_metrics(compare_dir, "--compare") if compare_dir else None
    history, unreadable = read_history(eval_dir.parent / HISTORY_FILE)
    plots = _plots(current, compare, history)
    run_dir = _run_dir_of(current.get("model") or {})
    if run_dir:
        for png in ("training_loss.png", "training_eval_loss.png"):
            if (run_dir / "lora" / png).is_file():
                plots[png] = (run_dir / "lora" / png).read_bytes()
    for name, data in plots.items():
        (eval_dir / name).write_bytes(data)
    rows = [("evaluation", current["label"]), ("model", json.dumps(current.get("model"), ensure_ascii=False)),
            ("cases x samples", f"{current['cases']} x {current['samples']}"), ("judge", json.dumps(current.get("judge"), ensure_ascii=False))]
    metric_rows = _flatten(current["metrics"])
    compare_rows = _flatten(compare["metrics"]) if compare else {}
    md = [f"# Evaluation report: {current['label']}", ""] + [f"- **{k}**: {v}" for k, v in rows] + ["",
          f"| metric | {current['label']} |" + (f" {compare['label']} |" if compare else ""),
          "|---|---|" + ("---|" if compare else "")]
    shown = lambda value: "–" if value is None else value  # noqa: E731
    md += [f"| {k} | {shown(v)} |" + (f" {shown(compare_rows.get(k))} |" if compare else "") for k, v in metric_rows.items()]
    md += ["", "## Trend", "", "| evaluation | refusal F1 | crisis referral | ROUGE-L | BLEU-4 | p50 latency (s) |", "|---|---|---|---|---|---|"]
    md += [f"| {h['label']} | " + " | ".join(_cell(_get(h["metrics"], path)) for path in TREND_COLUMNS) + " |" for h in history]
    if unreadable:
        md += ["", f"({unreadable} unreadable lines of {HISTORY_FILE} left out.)"]
    md += [""] + [f"![{name}]({name})" for name in plots]
    md_path, html_path = eval_dir / "report.md", eval_dir / "report.html"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    atomic_write_text(html_path, _html(current["label"], md, plots))
    return md_path, html_path


def read_metrics(eval_dir: Path, what: str) -> dict:
    """An evaluation folder's metrics.json, or one sentence saying why it cannot be used."""
    path = Path(eval_dir) / "metrics.json"
    if not Path(eval_dir).is_dir():
        raise PrepError(f"{what} {eval_dir}: not an evaluation folder; expected the --out folder of an earlier 'prep eval'.")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PrepError(f"{what} {eval_dir}: no metrics.json; run 'prep eval' first.") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PrepError(f"{what} {path}: not readable JSON; run 'prep eval' again for that folder.") from None
    if not (isinstance(summary, dict) and isinstance(summary.get("metrics"), dict) and summary.get("label")):
        raise PrepError(f"{what} {path}: not the metrics.json of 'prep eval' (no label and metrics).")
    return summary


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _html(title: str, markdown_lines: list[str], plots: dict[str, bytes]) -> str:
    """A self-contained page: the Markdown's headings, lines and tables, and the plots inlined."""
    def inline(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))

    body, in_table = [], False
    for line in markdown_lines:
        is_row = line.startswith("|")
        if in_table and not is_row:
            body.append("</table>")
        if is_row and not in_table:
            body.append("<table>")
        in_table = is_row
        if line.startswith("![") or line.startswith("|---"):
            continue
        if is_row:
            body.append("<tr>" + "".join(f"<td>{inline(c.strip())}</td>" for c in line.strip().strip("|").split("|")) + "</tr>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line.lstrip('# '))}</h{level}>")
        elif line:
            body.append(f"<p>{inline(line.lstrip('- '))}</p>")
    if in_table:
        body.append("</table>")
    images = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}"><figcaption>{n}</figcaption></figure>'
                     for n, d in plots.items())
    return (f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}td{border:1px solid #ccc;padding:2px 6px}"
            "table{border-collapse:collapse;margin:1em 0}img{max-width:100%}</style></head><body>"
            + "\n".join(body) + images + "</body></html>\n")
