"""prep eval's inputs as users gave them: a wrong input is one sentence before anything runs, and an odd folder
name, a crash mid-write or a Chinese label does not spoil the evaluation, its report or its trend."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from fake_openai import Behaviour, FakeOpenAI
from prep import eval_report
from prep.errors import PrepError
from prep.eval_report import build_report, read_compare
from prep.evaluate import DEFAULT_PLAN, EndpointModel, EvalOptions, LocalModel, load_plan, run_eval

PLAN = pd.read_csv(DEFAULT_PLAN, dtype=str, keep_default_na=False)
NOWHERE = "http://127.0.0.1:9/v1"  # an endpoint nothing listens on: a test that reaches it fails


def answers_with_the_reference(messages: list) -> str:
    row = PLAN[PLAN.question == messages[-1]["content"]]
    return "好的。" if row.empty else row.reference.iloc[0]


def endpoint(url: str) -> EndpointModel:
    return EndpointModel(url, "fake", "系统", 64, 0.7, 0.9)


def counselling(n: int) -> list:
    return [c for c in load_plan() if c.kind == "counselling"][:n]


def evaluate(folder: Path, label: str = "", cases: list | None = None) -> dict:
    with FakeOpenAI(Behaviour(responder=answers_with_the_reference)) as url:
        return run_eval(endpoint(url), cases or counselling(1), EvalOptions(folder, label=label))


def prep_eval(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prep.cli", "eval", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def header_only_plan(path: Path) -> Path:
    PLAN.head(0).to_csv(path, index=False)
    return path


def unloadable_model(folder: Path, window: int = 8192) -> Path:
    """A model folder that passes the quick checks but whose weights cannot load: an error about loading it means
    the model was loaded before the bad input was noticed."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": window}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"not weights")
    (folder / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    return folder


def test_out_dot_inside_the_folder_is_named_after_the_folder_and_reported(tmp_path):
    folder = tmp_path / "基线"
    folder.mkdir()
    plan = tmp_path / "plan.csv"
    PLAN[PLAN.kind == "counselling"].head(2).to_csv(plan, index=False)
    with FakeOpenAI(Behaviour(responder=answers_with_the_reference)) as url:
        result = prep_eval("--base-url", url, "--out", ".", "--plan", str(plan), cwd=folder)
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["label"] == "基线"
    assert "| 基线 |" in (folder / "report.md").read_text(encoding="utf-8")
    history = (tmp_path / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()  # next to the folder, as for any --out
    assert [json.loads(line)["label"] for line in history] == ["基线"] and not (folder / "eval_history.jsonl").exists()


def test_comparing_an_evaluation_with_itself_is_refused_however_the_folder_is_named(tmp_path, monkeypatch):
    evaluate(tmp_path / "v1")
    monkeypatch.chdir(tmp_path / "v1")
    with pytest.raises(PrepError, match=r"--compare \.: the same folder as --out .*compared with itself"):
        read_compare(Path("."), tmp_path / "v1")
    with pytest.raises(PrepError, match="the same folder as --out"):
        build_report(tmp_path / "v1", compare_dir=Path("../v1"))
    assert not (tmp_path / "v1" / "report.md").exists()


def test_prep_eval_refuses_comparing_with_itself_before_asking_anything(tmp_path):
    """The CLI checked --compare with the metrics of the folder the run then replaced: the run was compared with itself."""
    evaluate(tmp_path / "v1")
    before = (tmp_path / "v1" / "metrics.json").read_bytes()
    result = subprocess.run([str(Path(sys.executable).parent / "prep"), "eval", "--base-url", NOWHERE, "--out", str(tmp_path / "v1"),
                             "--compare", str(tmp_path / "v1" / ".")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "the same folder as --out" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert (tmp_path / "v1" / "metrics.json").read_bytes() == before


def test_a_plan_without_questions_is_refused_unless_held_out_dialogues_are_asked(tmp_path):
    plan = header_only_plan(tmp_path / "plan.csv")
    with pytest.raises(PrepError, match=r"--plan .*plan\.csv: no questions, only the header row"):
        load_plan(plan)
    split = tmp_path / "psy_test.json"
    split.write_text(json.dumps([{"instruction": "最近总是失眠。", "input": "", "output": "失眠一定很辛苦。"}], ensure_ascii=False),
                     encoding="utf-8")
    assert [c.kind for c in load_plan(plan, split)] == ["heldout"]
    with pytest.raises(PrepError, match="no questions to ask"):
        run_eval(endpoint(NOWHERE), [], EvalOptions(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval_history.jsonl").exists()


def test_an_unknown_kind_is_refused_naming_the_row_the_value_and_the_kinds(tmp_path):
    plan, typo = tmp_path / "plan.csv", PLAN.head(3).copy()
    typo.loc[1, "kind"] = "counseling"  # was left out of ROUGE-L/BLEU and the judge without a word
    typo.to_csv(plan, index=False)
    with pytest.raises(PrepError, match=rf"row 3 has kind 'counseling' \(id {typo.id[1]}\); expected one of "
                                        "counselling, off_topic, crisis, edge"):
        load_plan(plan)


def test_refusal_f1_without_a_case_that_expects_a_refusal_is_a_gap_not_zero(tmp_path):
    summary = evaluate(tmp_path / "v1", cases=counselling(2))
    assert summary["metrics"]["refusal"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    report = build_report(tmp_path / "v1")[0].read_text(encoding="utf-8")
    assert "| refusal.f1 | – |" in report
    assert "| v1 | – | – | 1 |" in report[report.index("## Trend"):]  # refusal F1 and crisis referral: gaps; ROUGE-L 1


def test_an_answer_cut_by_a_crash_is_skipped_and_the_next_answer_stays_readable(tmp_path):
    cases, options = load_plan(limit_per_kind=2), {"model_info": {"endpoint": "the same"}}
    journal = tmp_path / "e" / "candidates.partial.jsonl"

    def failing_on(case):
        def respond(messages):
            if messages[-1]["content"] == case.question:
                raise RuntimeError("the server broke")
            return answers_with_the_reference(messages)
        return respond

    for stop in (cases[3], cases[6]):
        with FakeOpenAI(Behaviour(responder=failing_on(stop))) as url, pytest.raises(PrepError, match=stop.case_id):
            run_eval(endpoint(url), cases, EvalOptions(tmp_path / "e", **options))
        if stop is cases[3]:  # killed while writing the next answer: the line ends inside a character
            with open(journal, "ab") as handle:
                handle.write(json.dumps({"case_id": stop.case_id, "reply": "我在"}, ensure_ascii=False).encode("utf-8")[:-4])
    lines = journal.read_bytes().split(b"\n")
    assert sum(1 for line in lines if line.strip()) == 7 and [json.loads(line)["case_id"] for line in lines[4:7]] == [
        c.case_id for c in cases[3:6]]  # the three answers after the cut line are lines of their own
    healthy = FakeOpenAI(Behaviour(responder=answers_with_the_reference))
    with healthy as url:
        summary = run_eval(endpoint(url), cases, EvalOptions(tmp_path / "e", **options))
    assert len(healthy.requests) == 2 and summary["metrics"]["candidates"] == len(cases)


@pytest.mark.parametrize("option, value, window, message", [
    ("--samples", "0", 8192, "--samples 0: expected at least 1 answer per question"),
    ("--max-new-tokens", "100000000", 8192, "--max-new-tokens 100000000: leaves no room for the question in the 4096 tokens"),
    ("--max-new-tokens", "600", 512, "--max-new-tokens 600: leaves no room for the question in the 512 tokens"),
    ("--plan", None, 8192, "no questions, only the header row"),  # None: a plan with only its header row
])
def test_bad_inputs_are_refused_before_the_local_model_loads(tmp_path, option, value, window, message):
    value = value or str(header_only_plan(tmp_path / "plan.csv"))
    model = unloadable_model(tmp_path / "merged", window)
    result = prep_eval("--model", str(model), "--out", str(tmp_path / "out"), option, value)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "--context-tokens" not in result.stderr and "cannot load" not in result.stderr  # prep eval's words, nothing loaded
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval_history.jsonl").exists()


def test_a_local_model_loads_once_the_evaluation_inputs_are_good(tmp_path, tiny_model):
    model = LocalModel(tiny_model, "系统", 16, 0.7, 0.9)
    with pytest.raises(PrepError, match="--samples 0"):
        run_eval(model, counselling(1), EvalOptions(tmp_path / "e", samples=0))
    assert model.session is None and not (tmp_path / "e").exists()
    summary = run_eval(model, counselling(1), EvalOptions(tmp_path / "e", samples=2))
    assert summary["metrics"]["candidates"] == 2 and model.session is not None


def test_a_chinese_label_is_drawn_with_a_chinese_font(tmp_path):
    if not eval_report._cjk_fonts():
        pytest.skip("no font with Chinese characters is installed here")
    evaluate(tmp_path / "v1", label="基线模型")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_report(tmp_path / "v1")
    assert not [w for w in caught if "missing from" in str(w.message)]
    assert (tmp_path / "v1" / "trend.png").is_file()


def test_without_a_chinese_font_a_chinese_label_gets_one_warning_not_one_per_character(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_report, "_cjk_fonts", lambda: ())
    evaluate(tmp_path / "v1", label="基线模型")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_report(tmp_path / "v1")
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "Chinese" in m or "missing from" in m] == [
        "no font with Chinese characters is installed (e.g. fonts-noto-cjk), so the Chinese labels in the report's "
        "plots show as boxes"]
    assert (tmp_path / "v1" / "trend.png").is_file()


def test_a_model_given_as_dot_still_finds_its_run(tmp_path, monkeypatch):
    """--model . from inside runs/NAME/merged looked for ./../run_manifest.json as "run_manifest.json" next to "."
    itself: the run (its loss curves, the questions it trained on) was not found."""
    from prep.evaluate import local_model_info

    merged = tmp_path / "runs" / "demo" / "merged"
    merged.mkdir(parents=True)
    (merged / "model.safetensors").write_bytes(b"weights")
    (merged.parent / "run_manifest.json").write_text("{}", encoding="utf-8")
    monkeypatch.chdir(merged)
    assert Path(local_model_info(Path("."))["run_manifest"]).resolve() == (merged.parent / "run_manifest.json").resolve()
