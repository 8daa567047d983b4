"""The evaluation report: Markdown and a self-contained HTML page with plots.

Metric bars for this evaluation (and a comparison, e.g. the base model, side by
side), the training loss curves of the run the model came from, and the trend
of every past evaluation read from the append-only history file.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import re
import subprocess
import warnings
from pathlib import Path

from prep.errors import PrepError
from prep.evaluate import HISTORY_FILE, history_path, read_history
from prep.fsutil import atomic_write_text

BAR_METRICS = [("refusal F1", ("refusal", "f1")), ("crisis referral", ("crisis_referral_rate",)),
               ("crisis referral + guard", ("crisis_referral_rate_guarded",)), ("ROUGE-L", ("rouge_l",)), ("BLEU-4", ("bleu4",))]


TREND_COLUMNS = [("refusal", "f1"), ("crisis_referral_rate",), ("rouge_l",), ("bleu4",), ("latency_p50_s",)]

# Fonts with Chinese glyphs, best first (labels such as "基线" are boxes in matplotlib's default DejaVu Sans).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "Droid Sans Fallback", "Microsoft YaHei", "SimHei", "PingFang SC", "Heiti SC",
             "Noto Sans CJK JP", "Noto Sans CJK TC", "Arial Unicode MS")
_CHINESE = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef]")


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
    labels = [current["label"]] + ([compare["label"]] if compare else []) + [h["label"] for h in history]
    with matplotlib.rc_context(_font_settings(labels)), warnings.catch_warnings():
        if not _cjk_fonts():  # one warning per missing character: _font_settings said it once
            warnings.filterwarnings("ignore", message="Glyph .* missing from")
        return _draw(current, compare, history)


def _draw(current: dict, compare: dict | None, history: list[dict]) -> dict[str, bytes]:
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


def _font_settings(labels: list) -> dict:
    """Matplotlib settings whose font list falls back, character by character, from DejaVu Sans to an installed
    Chinese font (a fallback works across font.family, not within font.sans-serif); without one, a Chinese label
    gets one warning instead of one per character."""
    cjk = _cjk_fonts()
    if not cjk and any(_CHINESE.search(str(label)) for label in labels):
        warnings.warn("no font with Chinese characters is installed (e.g. fonts-noto-cjk), so the Chinese labels in the "
                      "report's plots show as boxes", stacklevel=3)
    return {"font.family": ["DejaVu Sans", *cjk]}


@functools.lru_cache(maxsize=1)
def _cjk_fonts() -> tuple[str, ...]:
    """The installed fonts of CJK_FONTS that matplotlib knows, else the first Chinese font fontconfig lists (one
    installed after matplotlib built its font cache)."""
    from matplotlib import font_manager

    known = {font.name for font in font_manager.fontManager.ttflist}
    found = tuple(name for name in CJK_FONTS if name in known)
    return found or _fontconfig_chinese_font()


def _fontconfig_chinese_font() -> tuple[str, ...]:
    from matplotlib import font_manager

    try:
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    for line in listed.splitlines():
        path = line.strip().rstrip(":")
        try:
            font_manager.fontManager.addfont(path)
            return (font_manager.FontProperties(fname=path).get_name(),)
        except (OSError, RuntimeError, ValueError):
            continue
    return ()


def _run_dir_of(model_info: dict) -> Path | None:
    model_dir = Path(model_info["model_dir"]).resolve() if model_info.get("model_dir") else None  # ("." too)
    if model_dir and model_dir.name == "merged" and (model_dir.parent / "lora").is_dir():
        return model_dir.parent
    return None


def build_report(eval_dir: Path, compare_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html into ``eval_dir``; return their paths."""
    eval_dir = Path(eval_dir)
    current = read_metrics(eval_dir, "evaluation")
    compare = read_compare(compare_dir, eval_dir) if compare_dir else None
    history, unreadable = read_history(history_path(eval_dir))
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


def read_compare(compare_dir: Path, eval_dir: Path) -> dict:
    """The metrics of the --compare evaluation; the evaluation's own folder, however it is named, is refused: its
    metrics.json becomes this run's, and the report would compare the run with itself."""
    if Path(compare_dir).resolve() == Path(eval_dir).resolve():
        raise PrepError(f"--compare {compare_dir}: the same folder as --out {eval_dir}, so the run would be compared with "
                        "itself; expected the folder of another evaluation (e.g. the base model's).")
    return read_metrics(compare_dir, "--compare")


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
