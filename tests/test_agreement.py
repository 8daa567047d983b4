"""Multi-annotator agreement: kappa on hand-computed tables and the resolution rule."""

import json

import pytest

from conftest import write_csv
from prep.agreement import cohen_kappa, fleiss_kappa, resolve, verdict_of
from prep.build import BuildOptions, build
from prep.records import Conversation, Provenance, Turn


def test_cohen_kappa_by_hand():
    # 10 items: 7 agreements; rater A says x 5 times, B says x 6 times.
    pairs = [("x", "x")] * 4 + [("y", "y")] * 3 + [("x", "y")] * 1 + [("y", "x")] * 2
    # po = 0.7; pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("x", "x"), ("y", "y")]) == pytest.approx(1.0)


def test_fleiss_kappa_by_hand():
    # Two items, three raters. Item 1 all agree (P=1), item 2 split 2-1 (P=1/3). P_bar = 2/3.
    # Label shares: a 5/6... a appears 3+2=5 times, b once -> Pe = (5/6)^2 + (1/6)^2 = 26/36.
    expected = (2 / 3 - 26 / 36) / (1 - 26 / 36)
    assert fleiss_kappa([["a", "a", "a"], ["a", "a", "b"]]) == pytest.approx(expected)


def rec(question, category, annotator, verdict=None, answer="回答"):
    meta = {"verdict": verdict} if verdict else {}
    return Conversation([Turn("user", question), Turn("assistant", answer)], Provenance("f.csv", f"row {annotator}", annotator=annotator),
                        category=category, meta=meta)


def test_resolution_rule_majority_tie_and_reject():
    records = [
        rec("问题一", "焦虑", "A"), rec("问题一", "焦虑", "B"), rec("问题一", "失眠", "C"),  # majority 焦虑
        rec("问题二", "人际", "A"), rec("问题二", "亲子", "B"),  # tie -> held back
        rec("问题三", "学业", "A", "reject"), rec("问题三", "学业", "B", "删除"), rec("问题三", "学业", "C", "保留"),
        rec("单人标注", "职场", "A"),
    ]
    result = resolve(records)
    assert [(r.first_question, r.provenance.annotator) for r in result.kept] == [("问题一", "A"), ("问题一", "B"), ("单人标注", "A")]
    reasons = sorted((r.raw, r.reason) for r in result.rejected)
    assert reasons == [("问题一", "annotator_disagreement"), ("问题三", "annotator_rejected"), ("问题三", "annotator_rejected"),
                       ("问题三", "annotator_rejected"), ("问题二", "annotator_conflict"), ("问题二", "annotator_conflict")]
    assert {c["question"] for c in result.conflicts} == {"问题一", "问题二", "问题三"}
    assert result.stats["items"] == 3 and result.stats["category"]["method"] == "fleiss"


def test_build_writes_conflicts_and_kappa(tmp_path):
    rows = [("我总是失眠", "规律作息。", "失眠", "甲"), ("我总是失眠", "规律作息哦。", "失眠", "乙"),
            ("和同事吵架了", "先冷静一下。", "人际", "甲"), ("和同事吵架了", "先冷静一下吧。", "职场", "乙")]
    path = write_csv(tmp_path / "two.csv", rows, header="question,answer,category,annotator")
    report = build([path], BuildOptions(name="a", dataset_dir=tmp_path, test_size=0))
    assert report["rows_in"] == report["kept"] + report["duplicates"] + report["rejected"]
    # po = 1/2, pe = 1/4 (only 失眠 shared): kappa = (1/2 - 1/4) / (3/4) = 1/3
    assert report["agreement"]["category"] == {"method": "cohen", "kappa": 0.3333, "items": 2}
    assert report["rejected_by_reason"] == {"annotator_conflict": 2}
    conflicts = [json.loads(x) for x in (tmp_path / "data" / "a_conflicts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert conflicts[0]["question"] == "和同事吵架了" and conflicts[0]["resolution"].startswith("tie")


def test_a_lone_reject_verdict_is_not_trained_on(tmp_path):
    """A row its only annotator marked 否 / 不保留 (or one with a verdict and no annotator) never reaches the
    training file; a verdict that is neither a keep nor a reject word is rejected too, not read as 'no verdict'."""
    rows = [
        ("我总是拖延怎么办", "你就是懒，别找借口。", "张三", "否"),
        ("我最近很焦虑", "焦虑很常见，我们可以一起看看原因。", "张三", "是"),
        ("我和室友处不好", "相处需要时间，试着沟通。", "", "不保留"),
        ("我失眠很久了", "先规律作息，睡前放下手机。", "李四", "待定"),
        ("考试前总是紧张", "紧张说明你在乎，试试深呼吸。", "李四", "✓"),
    ]
    report = build([write_csv(tmp_path / "labels.csv", rows, header="问题,回答,标注人,是否保留")],
                   BuildOptions(name="r", dataset_dir=tmp_path, test_size=0.0))
    trained = [item["output"] for item in json.loads((tmp_path / "data" / "r_alpaca.json").read_text(encoding="utf-8"))]
    assert trained == ["焦虑很常见，我们可以一起看看原因。", "紧张说明你在乎，试试深呼吸。"]
    assert report["rejected_by_reason"] == {"annotator_rejected": 2, "unknown_verdict": 1}
    rejected = [json.loads(line) for line in (tmp_path / "data" / "r_rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(r["reason"] == "unknown_verdict" and "待定" in r["detail"] for r in rejected)


def test_json_labels_count_and_dialogues_are_compared_whole(tmp_path):
    """annotator / verdict keys on JSON items count as the table columns do; two different dialogues that both
    open with 你好 are two items, not one question the annotators disagree on."""
    dialogue = lambda second, category, annotator, verdict=None: {
        "conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好，我在。"},
                          {"from": "human", "value": second}, {"from": "gpt", "value": "我们慢慢聊。"}],
        "category": category, "annotator": annotator, **({"verdict": verdict} if verdict else {})}
    items = [dialogue("我和男朋友分手了", "恋爱", "A"), dialogue("我考研失败了", "学业", "B"),
             {"instruction": "我总是拖延", "output": "你就是懒。", "annotator": "A", "verdict": "reject"},
             {"instruction": "我总是拖延", "output": "你就是懒。", "annotator": "B", "verdict": "删除"}]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    report = build([path], BuildOptions(name="j", dataset_dir=tmp_path, test_size=0.0))
    assert report["kept"] == 2 and report["rejected_by_reason"] == {"annotator_rejected": 2}


def test_numeric_json_verdicts_are_keep_and_reject_words():
    """JSON writes a spreadsheet's 1 as 1.0 and a checkbox as true: they were unknown_verdict, and the row dropped."""
    assert [verdict_of(value) for value in ("1.0", "1", "True", "0.0", "0", "False")] == ["keep"] * 3 + ["reject"] * 3
    assert [verdict_of(value) for value in ("2", "nan", "1e0", "01", "-0", "inf", "0.9999999999999999999")] == [None] * 7
