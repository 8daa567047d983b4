"""Evaluation and the optimisation loop: metrics on known cases, prep eval against a real HTTP
endpoint, the LLM judge, the report and trend, review into feedback data, and the loop end to end."""

from __future__ import annotations

import json
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import ROOT, tool_env
from fake_openai import Behaviour, FakeOpenAI
from prep import metrics
from prep.build import BuildOptions, build
from prep.errors import PrepError
from prep.eval_report import build_report
from prep.evaluate import DEFAULT_PLAN, EndpointModel, EvalOptions, load_plan, run_eval
from prep.judge import Judge
from prep.review import review

PLAN = pd.read_csv(DEFAULT_PLAN, dtype=str, keep_default_na=False)
CRISIS_REPLY_WITHOUT_REFERRAL = "我听到了，你现在一定非常难受。"


def test_reference_metrics_on_known_chinese_strings():
    # LCS("我很好", "我很不好") = 3: P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7
    assert metrics.rouge_l("我很好", "我很不好") == pytest.approx(6 / 7, abs=1e-4)
    assert metrics.rouge_l("今天，我很开心！", "今天我很开心") == 1.0  # punctuation does not count
    assert metrics.bleu4("我今天很开心啊", "我今天很开心啊") == 1.0
    assert metrics.bleu4("完全不同的话", "我今天很开心") == 0.0
    assert metrics.rouge_l("", "参考") == 0.0


def test_precision_recall_f1_by_hand():
    # expected: T T T F F F; predicted: T T F T F F -> tp 2, fp 1, fn 1: P = R = F1 = 2/3
    result = metrics.precision_recall_f1([True, True, True, False, False, False], [True, True, False, True, False, False])
    assert (result.precision, result.recall, result.f1, result.support) == (0.6667, 0.6667, 0.6667, 3)
    assert metrics.precision_recall_f1([False], [False]).f1 == 0.0
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5 and metrics.percentile([5], 95) == 5


def test_refusal_detector_on_labelled_replies_and_plan_references():
    labels = pd.read_csv(ROOT / "data" / "tests" / "refusal_labels.csv")
    predicted = labels.reply.map(metrics.is_refusal)
    assert (predicted == labels.refused.astype(bool)).mean() >= 0.95
    refs = PLAN.reference.map(metrics.is_refusal)
    assert (refs == (PLAN.expect == "refuse")).mean() >= 0.95


def plan_responder(messages: list) -> str:
    """A model that answers the plan perfectly, except that it forgets referrals in a crisis."""
    question = messages[-1]["content"]
    row = PLAN[PLAN.question == question]
    if row.empty:
        return "好的。"
    row = row.iloc[0]
    return CRISIS_REPLY_WITHOUT_REFERRAL if row.expect == "referral" else row.reference


def test_eval_against_an_endpoint_writes_candidates_metrics_report_and_trend(tmp_path):
    cases = load_plan(limit_per_kind=4)
    assert {c.kind for c in cases} == {"counselling", "off_topic", "crisis", "edge"}
    with FakeOpenAI(Behaviour(responder=plan_responder)) as url:
        model = EndpointModel(url, "fake", "系统", 64, 0.7, 0.9)
        first = run_eval(model, cases, EvalOptions(tmp_path / "iter1", samples=2, label="iter1", model_info={"endpoint": url}))
        second = run_eval(model, cases, EvalOptions(tmp_path / "iter2", samples=1, label="iter2", model_info={"endpoint": url}))
    m = first["metrics"]
    assert m["candidates"] == len(cases) * 2
    assert m["refusal"]["f1"] == 1.0 and m["rouge_l"] == 1.0 and m["bleu4"] == 1.0
    assert m["crisis_referral_rate"] == 0.0 and m["crisis_referral_rate_guarded"] == 1.0
    assert m["latency_p95_s"] >= m["latency_p50_s"] > 0 and m["ttft_mean_s"] > 0
    candidates = [json.loads(x) for x in (tmp_path / "iter1" / "candidates.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {c["sample"] for c in candidates} == {0, 1} and all(c["model"] == {"endpoint": url} for c in candidates)
    crisis = [c for c in candidates if c["kind"] == "crisis"]
    assert all(c["referral_added"] and "12356" in c["reply_guarded"] for c in crisis)

    md, html = build_report(tmp_path / "iter2", compare_dir=tmp_path / "iter1")
    report = md.read_text(encoding="utf-8")
    assert "| iter1 |" in report and "| iter2 |" in report  # the trend lists both evaluations
    page = html.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 2 and "<table>" in page
    history = (tmp_path / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["label"] for x in history] == ["iter1", "iter2"]
    assert second["metrics"]["candidates"] == len(cases)


def test_llm_judge_scores_are_validated_and_failures_recorded(tmp_path):
    verdict = {"comprehensiveness": 2, "professionalism": 3, "authenticity": 2, "safety": 1, "empathy": 3, "reason": "好"}
    with FakeOpenAI(Behaviour(responder=lambda messages: "评分如下：" + json.dumps(verdict, ensure_ascii=False))) as url:
        judge = Judge(url, "judge-x")
        scored = judge.score("我很焦虑", "深呼吸，慢慢来。")
    assert scored["scores"] == {k: v for k, v in verdict.items() if k != "reason"}
    assert scored["judge_model"] == "judge-x" and len(scored["prompt_sha256"]) == 16
    with FakeOpenAI(Behaviour(responder=lambda messages: '{"comprehensiveness": 9}')) as url:
        failed = Judge(url, "judge-x").score("问", "答")
    assert "error" in failed and "outside" in failed["error"]

    cases = [c for c in load_plan() if c.kind == "counselling"][:3]
    with FakeOpenAI(Behaviour(responder=lambda m: json.dumps(verdict) if "督导" in m[-1]["content"] else plan_responder(m))) as url:
        summary = run_eval(EndpointModel(url, "fake", "系统", 64, 0.7, 0.9), cases,
                           EvalOptions(tmp_path / "judged", judge=Judge(url, "judge-x")))
    assert summary["metrics"]["judge"] == {"comprehensiveness": 2, "professionalism": 3, "authenticity": 2, "safety": 1,
                                           "empathy": 3, "judged": 3}
    assert summary["judge"]["model"] == "judge-x"


def test_review_decisions_become_feedback_training_rows(tmp_path):
    cases = [c for c in load_plan() if c.kind in ("counselling", "off_topic")][:3]
    with FakeOpenAI(Behaviour(responder=plan_responder)) as url:
        run_eval(EndpointModel(url, "fake", "系统", 64, 0.7, 0.9), cases, EvalOptions(tmp_path / "e", samples=2))
    decisions = tmp_path / "decisions.jsonl"
    decisions.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in [
        {"case_id": cases[0].case_id, "accept": [1]},
        {"case_id": cases[1].case_id, "correction": "这是审核人写的更好的回答。"},
        {"case_id": cases[2].case_id, "skip": True},
    ]) + "\n", encoding="utf-8")
    path, counts = review(tmp_path / "e" / "candidates.jsonl", "张老师", decisions, tmp_path / "feedback")
    assert counts == {"accepted": 1, "corrected": 1, "skipped": 1}
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [r["output"] for r in rows] == [cases[0].reference, "这是审核人写的更好的回答。"]
    assert all(r["reviewer"] == "张老师" and r["origin"] == "feedback" for r in rows)

    report = build([tmp_path / "feedback"], BuildOptions(name="fb", dataset_dir=tmp_path, test_size=0))
    assert report["by_origin"] == {"feedback": 2} and report["rows_in"] == report["kept"] + report["duplicates"] + report["rejected"]

    interactive, _ = review(tmp_path / "e" / "candidates.jsonl", "李", None, tmp_path / "fb2",
                            ask=lambda case_id, candidates: {"accept": [0]})
    assert len(interactive.read_text(encoding="utf-8").splitlines()) == 3
    with pytest.raises(PrepError, match="--reviewer"):
        review(tmp_path / "e" / "candidates.jsonl", " ", decisions, tmp_path / "x")


@pytest.mark.slow
def test_loop_demo_feeds_reviewed_answers_back_and_reports_both_iterations(tmp_path):
    repo = tmp_path / "repo"
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "models", "__pycache__", ".pytest_cache", "*.egg-info", "artifacts")
    shutil.copytree(ROOT, repo, ignore=skip)
    result = subprocess.run(["bash", "loop_demo.sh"], cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    loop = repo / "runs" / "loop"
    feedback = [json.loads(x) for f in (loop / "feedback").glob("*.jsonl") for x in f.read_text(encoding="utf-8").splitlines()]
    assert feedback and all(r["origin"] == "feedback" for r in feedback)
    train = json.loads((repo / "data" / "psy_loop_alpaca.json").read_text(encoding="utf-8"))
    assert {r["output"] for r in feedback} <= {item["output"] for item in train}
    manifest = json.loads((repo / "runs" / "loop2" / "run_manifest.json").read_text(encoding="utf-8"))
    assert manifest["config"]["dataset"] == "psy_loop_alpaca" and manifest["status"] == "finished"
    history = [json.loads(x)["label"] for x in (loop / "eval" / "eval_history.jsonl").read_text(encoding="utf-8").splitlines()]
    assert history == ["iter1", "iter2"]
    report = (loop / "eval" / "iter2" / "report.md").read_text(encoding="utf-8")
    assert "| iter1 |" in report and "| iter2 |" in report and "training_loss.png" in report
