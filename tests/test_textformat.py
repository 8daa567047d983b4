"""The <s>Human: parser on what teachers really emit."""

from prep.textformat import format_text, parse_text
from prep.records import Turn


def test_seed_prompt_variant_with_lists_and_chatter():
    text = (
        "好的，以下是20个问答对：\n"
        "1. <s>Human: 我最近很焦虑\n<s><s>Assistant: 听起来你很辛苦。\n- 深呼吸\n- 散步\n<s>\n"
        "2. **Human：** 睡不着怎么办\n</s><s>**Assistant：** 先规律作息。\n</s>\n"
        "希望这些对您有帮助！"
    )
    parsed = parse_text(text)
    assert [p.error for p in parsed] == [None, None]
    assert parsed[0].turns == [Turn("user", "我最近很焦虑"), Turn("assistant", "听起来你很辛苦。\n- 深呼吸\n- 散步")]
    assert parsed[1].turns[1].content == "先规律作息。"


def test_missing_closing_tag_at_end_is_truncated():
    text = "<s>Human: 第一个\n</s><s>Assistant: 完整的回答\n</s><s>Human: 第二个\n</s><s>Assistant: 被截断的回"
    parsed = parse_text(text)
    assert [p.error for p in parsed] == [None, "truncated"]


def test_code_fence_and_system_label_apply_to_following_pairs():
    text = "```\n<s>System: 系统提示\n</s><s>Human: 问\n</s><s>Assistant: 答\n</s>\n```"
    [parsed] = parse_text(text)
    assert parsed.system == "系统提示" and parsed.error is None
    assert parsed.turns == [Turn("user", "问"), Turn("assistant", "答")]


def test_csv_cell_is_one_multi_turn_conversation_and_round_trips():
    turns = [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"), Turn("assistant", "d")]
    [parsed] = parse_text(format_text(turns, system="s"), one_conversation=True)
    assert parsed.turns == turns and parsed.system == "s" and parsed.error is None


def test_text_without_labels_is_reported_not_dropped():
    [parsed] = parse_text("这只是一段没有任何标签的文字")
    assert parsed.error == "no_pairs"
