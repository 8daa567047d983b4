"""Cleaning steps as pure functions: normalise, validate, scrub, crisis rule."""

from prep import clean
from prep.records import Conversation, Provenance, Turn


def conv(*texts: str, system: str | None = None) -> Conversation:
    roles = ["user", "assistant"] * len(texts)
    return Conversation([Turn(r, t) for r, t in zip(roles, texts)], Provenance("f.csv", "row 2"), system=system)


def test_normalise_keeps_chinese_punctuation_and_strips_artefacts():
    text = "作为一个AI语言模型，我理解你的感受！ＡＢＣ１２３\u200b，好的：  </s>\n\n\n\n下一段"
    assert clean.normalise_text(text, answer=True) == "我理解你的感受！ABC123，好的：\n\n下一段"
    assert clean.normalise_text("**回答：** 先深呼吸。") == "先深呼吸。"


def test_normalise_leaves_what_chinese_writes_on_purpose_and_what_users_say():
    """…… stays an ellipsis and ① a circled number (NFKC spells them ...... and 1); "作为AI工程师" and "as an aid"
    are not AI disclaimers, and a user's own words are never stripped of one."""
    answer = "我明白……你可以：①规律作息②适度运动⑴先写下来㈠慢慢来。As an aid to sleep, try this."
    assert clean.normalise_text(answer, answer=True) == answer
    assert clean.normalise_text("作为AI工程师，我每天加班到半夜", answer=True) == "作为AI工程师，我每天加班到半夜"
    assert clean.normalise_text("作为一个AI助手我理解你。As an AI, I care.", answer=True) == "我理解你。I care."
    assert clean.normalise_text("Speaking as an AI, I would say no.", answer=True) == "Speaking as an AI, I would say no."
    openers = {"答：作为一个AI助手，我建议你先休息。": "我建议你先休息。", "首先，作为一个AI，我理解。": "首先，我理解。",
               "嗯……作为AI，我懂。": "嗯……我懂。", "- 作为AI，我会听。\n- 作为人工智能，我在。": "- 我会听。\n- 我在。"}
    assert {text: clean.normalise_text(text, answer=True) for text in openers} == openers
    result = clean.normalise([conv("作为人工智能，你会怎么看我？", "作为一个AI语言模型，我会认真听你说。")])
    assert [t.content for t in result.kept[0].turns] == ["作为人工智能，你会怎么看我？", "我会认真听你说。"]


def test_normalise_is_pure():
    original = conv(" 问 ", "答<|eot_id|>")
    result = clean.normalise([original])
    assert result.kept[0].turns == [Turn("user", "问"), Turn("assistant", "答")]
    assert original.turns[0].content == " 问 "


def test_validate_reasons():
    records = [
        conv("问", "答案"),
        conv("问", ""),
        Conversation([Turn("assistant", "答"), Turn("user", "问")], Provenance("f", "row 3")),
        conv("问", "啊" * 40),
        conv("问", "好" * 5000),
        conv("问", "答"),
    ]
    result = clean.validate(records)
    assert len(result.kept) == 1
    assert [r.reason for r in result.rejected] == ["empty_turn", "bad_roles", "repetition", "too_long", "too_short"]


def test_crisis_rule_needs_a_referral_after_each_crisis_message():
    ok = conv("我不想活了", "我很担心你，请拨打心理援助热线 12356。")
    bad = conv("今天天气不错", "是的。", "其实我想结束自己的生命", "出去走走吧。")
    result = clean.crisis_rule([ok, bad])
    assert [r.turns for r in result.kept] == [ok.turns] and result.kept[0].meta == {"crisis": True}
    assert result.rejected[0].reason == "crisis_without_referral"


def test_parallel_steps_give_the_sequential_result():
    texts = ["我最近失眠", "", "我不想活了", "电话13812345678", "啊" * 40, "作为一个AI语言模型，我理解你"]
    records = [conv(f"{texts[i % 6]}{i}", texts[(i + 3) % 6] or "好的回答") for i in range(120)]
    sequential = clean.run_steps(records, workers=1)
    parallel = clean.run_steps(records, workers=2, min_parallel=0)
    assert [r.turns for r in parallel.kept] == [r.turns for r in sequential.kept]
    assert sorted((r.reason, r.raw) for r in parallel.rejected) == sorted((r.reason, r.raw) for r in sequential.rejected)
    assert parallel.counts == sequential.counts and sequential.rejected


def test_minhash_signatures_are_the_same_in_worker_processes():
    import numpy as np

    from prep.dedup import DedupConfig, signatures

    texts = [f"我最近总是{w}，晚上睡不着，怎么办？" for w in ("失眠", "焦虑", "拖延", "自卑", "难过")] * 8 + ["短", ""]
    records = [Conversation(turns=[Turn("user", t or "空"), Turn("assistant", "好的")], provenance=Provenance(source="t", location=str(i)))
               for i, t in enumerate(texts)]
    alone = signatures(records, DedupConfig(), workers=1)
    pooled = signatures(records, DedupConfig(), workers=2, min_parallel=1)
    assert alone.shape == (len(records), 64) and np.array_equal(alone, pooled)
