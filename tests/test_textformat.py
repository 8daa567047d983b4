"""The <s>Human: parser on what teachers really emit."""

from prep.textformat import format_text, parse_dialogues, parse_text
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


def test_untagged_teacher_headings_and_outro_are_not_part_of_the_answers():
    """Without closing tags, 第二组对话： and the outro (以上是…组对话, 希望对您有帮助) were appended to the answers
    before them and trained on; a counsellor's own closing line is kept."""
    text = ("好的，下面是对话：\nHuman: 我很焦虑\nAssistant: 听起来你很辛苦。\n希望这些建议对你有帮助。\n\n第二组对话：\n"
            "Human: 睡不着\nAssistant: 先规律作息。\n以下是一些放松的示例：\n1. 深呼吸\n\n"
            "以上是2组心理咨询对话，涵盖焦虑和失眠。\n希望对您有帮助！")
    parsed = parse_text(text)
    assert [p.error for p in parsed] == [None, None]
    assert [p.turns[1].content for p in parsed] == ["听起来你很辛苦。\n希望这些建议对你有帮助。",
                                                    "先规律作息。\n以下是一些放松的示例：\n1. 深呼吸"]
    [english] = parse_text("User: I can't sleep\nAssistant: Try a regular bedtime.\n\nThe above conversations show empathy.")
    assert english.turns[1].content == "Try a regular bedtime."
    counsellor = ["你可以先找一个平静的时间。\n以上这些方法，希望能帮你和妈妈进行一次真正的对话。\n如果还是很难，可以考虑家庭咨询。",
                  "很常见。\n这些数据来自世界卫生组织。\n所以你并不孤单。", "先倾听。\n上述步骤可以用在每一次亲子对话里，比如：\n1. 复述",
                  "先准备。\n希望以上建议能让你和领导的对话更轻松。", "Here are some examples of phrases you can use:\n- I feel",
                  "These conversations get easier with practice.\nStart small."]
    for answer in counsellor:
        [parsed] = parse_text(f"Human: 怎么办\nAssistant: {answer}")
        assert parsed.turns[1].content == answer
    question = "我最近总是失眠。\n这些天我和父母的对话总是以争吵结束。\n我该怎么办？"
    assert parse_text(f"Human: {question}\nAssistant: 我们慢慢说。")[0].turns[0].content == question


def test_a_role_label_inside_a_tagged_answer_is_part_of_the_answer():
    """A counsellor quoting what the user could say (用户：…) split the answer into a fake user turn."""
    text = ("<s>Human: 我想和妈妈沟通\n</s><s>Assistant: 你可以这样说：\n用户：妈妈，我想跟你聊聊。\n这样开头比较温和。\n</s>"
            "<s>Human: 好的\n</s><s>Assistant: 加油\n</s>")
    [first, second] = parse_text(text)
    assert first.turns == [Turn("user", "我想和妈妈沟通"), Turn("assistant", "你可以这样说：\n用户：妈妈，我想跟你聊聊。\n这样开头比较温和。")]
    assert second.turns == [Turn("user", "好的"), Turn("assistant", "加油")] and second.error is None


def test_a_missing_close_tag_does_not_merge_two_turns_and_the_seed_variant_closes_with_the_next_label():
    """An answer whose </s> the teacher forgot is reported, not kept with the next question inside it; the seed's
    variant (我理解你。\\n<s><s>Human:) closes a turn with the tags that open the next one."""
    parsed = parse_text("<s>Human: 问题一\n</s><s>Assistant: 回答一\nHuman: 问题二\n</s><s>Assistant: 回答二\n</s>\n")
    assert [(p.error, p.turns) for p in parsed] == [("truncated", [Turn("user", "问题一"), Turn("assistant", "回答一")]),
                                                    (None, [Turn("user", "问题二"), Turn("assistant", "回答二")])]
    parsed = parse_text("<s>Human: 我很焦虑\n<s><s>Assistant: 我理解你。\n<s><s>Human: 睡不着\n<s><s>Assistant: 试试放松。\n<s>")
    assert [(p.error, p.turns[1].content) for p in parsed] == [(None, "我理解你。"), (None, "试试放松。")]


def test_dialogues_separated_by_hash_lines_keep_their_turns_together():
    text = ("<s>Human: 我失恋了\n</s><s>Assistant: 我在听。\n</s><s>Human: 我好难过\n</s><s>Assistant: 难过是正常的。\n</s>\n###\n"
            "<s>Human: 考试没考好\n</s><s>Assistant: 愿意说说吗？\n</s>\n###\n")
    parsed = parse_dialogues(text)
    assert [[t.content for t in p.turns] for p in parsed] == [["我失恋了", "我在听。", "我好难过", "难过是正常的。"],
                                                              ["考试没考好", "愿意说说吗？"]]


def test_numbered_dialogues_without_separators_are_cut_at_their_headings():
    """A teacher that numbers its dialogues (第1段对话： … 第2段对话：) instead of separating them with ### had two
    clients merged into one dialogue."""
    tagged = ("好的，以下是两段对话：\n第1段对话：\n<s>Human: 我最近睡不好\n</s><s>Assistant: 能说说吗？\n</s><s>Human: 总是想工作\n</s>"
              "<s>Assistant: 我们试试放松。\n</s>\n\n第二段对话：\n<s>Human: 我和妈妈吵架了\n</s><s>Assistant: 听起来很难受。\n</s>")
    untagged = ("**对话1**\n用户：我最近睡不好\n助手：能说说吗？\n\n**对话2**\n用户：我和妈妈吵架了\n助手：听起来很难受。\n\n"
                "以上是2组对话。")
    # Examples and sessions numbered 1, 2 … with nothing before them are dialogues too (they stayed one, with
    # 示例2： / Session 2 inside the first answer).
    examples = [f"{word}1：\n用户：我最近睡不好\n助手：能说说吗？\n\n{word}2：\n用户：我和妈妈吵架了\n助手：听起来很难受。"
                for word in ("示例", "Example ", "Session ", "案例")]
    for text in (tagged, untagged, *examples):
        parsed = parse_dialogues(text)
        assert [(p.error, p.turns[0].content, p.turns[-1].content) for p in parsed] == [
            (None, "我最近睡不好", "我们试试放松。" if text is tagged else "能说说吗？"), (None, "我和妈妈吵架了", "听起来很难受。")]


def test_headings_that_do_not_number_whole_dialogues_never_cut_one():
    """The reverted first attempt cut single dialogues at 第1轮对话 (a turn) and at a 对话 1： line quoted in an answer;
    examples numbered inside an answer (Example 1:, 示例1：) and a heading series out of order do not cut either."""
    turns = "\n</s><s>Assistant: 嗯。\n</s><s>Human: "
    texts = [
        "第1轮对话：\n<s>Human: 我很累" + turns + "还是累\n</s><s>Assistant: 休息一下。\n</s>\n第2轮对话：\n<s>Human: 好点了"
        + "\n</s><s>Assistant: 很好。\n</s>",
        "<s>Human: 我不会开口" + turns + "怎么说？\n</s><s>Assistant: 可以这样练习：\n对话 1：\n你：妈妈，我想聊聊。\n"
        "对话 2：\n你：我最近压力很大。\n</s>",
        "User: Any ways to relax?\nAssistant: Sure.\nExample 1: breathe in for four seconds.\nExample 2: relax each muscle.",
        "用户：怎么跟室友沟通？\n助手：可以这样说。\n示例1：\n“能不能晚上小声点？”\n示例2：\n“我们定个作息表吧。”\n用户：好的。\n助手：不客气。",
        "对话2：\n<s>Human: 甲" + turns + "乙\n</s><s>Assistant: 丙\n</s>\n对话1：\n<s>Human: 丁\n</s><s>Assistant: 戊\n</s>",
    ]
    for text in texts:
        parsed = parse_dialogues(text)
        assert len(parsed) == 1, (text, parsed)
    # The two-turn-heading dialogue is whole: every turn kept, in order.
    assert [t.content for t in parse_dialogues(texts[0])[0].turns][::2] == ["我很累", "还是累", "好点了"]


def test_numbered_dialogues_with_titles_settings_a_system_line_or_a_cut_off_last_one():
    """Headings with a title or another markup (### 对话1：失眠的大学生, 【对话一】, Dialogue 1: Exam stress) were not
    recognised, so two clients stayed in one dialogue and the heading ended inside an answer; an answer cut off by
    the length limit lost every dialogue in it; a broken middle dialogue merged the others into it."""
    for heading in ("### 对话{n}：失眠的大学生", "**对话{n}：考试焦虑**", "Conversation {n} – Anxiety", "Dialogue {n}: Exam stress",
                    "对话 {n}（失眠）", "**对话 {n}**：", "【对话{n}】", "模拟对话{n}：", "对话{n}：亲子冲突",
                    # the third review's: emoji, "n of 2", a number in brackets, English words
                    "🌱 对话{n}", "📌**对话{n}：失眠**", "对话 {n}/2", "对话 {n} / 2：考试", "对话（{n}）",
                    "Dialogue {w}: Exam stress"):
        first, second = (heading.format(n=n, w=word) for n, word in ((1, "One"), (2, "Two")))
        text = first + "\n用户：我睡不着\n助手：能说说吗？\n\n" + second + "\n背景：来访者是高三学生\n用户：我和妈妈吵架了\n助手：听起来很难受。"
        assert [[t.content for t in p.turns] for p in parse_dialogues(text)] == [["我睡不着", "能说说吗？"], ["我和妈妈吵架了", "听起来很难受。"]], heading
    with_system = "System: 你是一位温暖的心理咨询师\n对话1：\nHuman: 甲\nAssistant: 乙\n对话2：\nHuman: 丙\nAssistant: 丁"
    assert [(p.system, len(p.turns)) for p in parse_dialogues(with_system)] == [("你是一位温暖的心理咨询师", 2)] * 2
    cut_off = ("第1段对话：\n<s>Human: 我睡不着\n</s><s>Assistant: 能说说吗？\n</s>\n\n第2段对话：\n<s>Human: 我和妈妈吵架了\n</s>"
               "<s>Assistant: 听起来很难受。\n</s>\n\n第3段对话：\n<s>Human: 我考试没考好\n</s><s>Assistant: 这让你很失")
    assert [p.error for p in parse_dialogues(cut_off)] == [None, None, "truncated"]
    broken = "对话1：\n用户：甲\n助手：乙\n用户：丙\n\n对话2：\n用户：丁\n助手：戊"
    assert [(p.error, len(p.turns)) for p in parse_dialogues(broken)] == [("bad_roles", 3), (None, 2)]
    # 第一组： / 第一段： lines are an answer's steps, not dialogue headings: the two dialogues stay two.
    steps = ("对话1：失眠\n用户：我最近总是睡不着。\n助手：每天睡前做两组：\n第一组：腹式呼吸。\n第二组：肌肉放松。\n用户：好的。\n助手：坚持一周。\n\n"
             "对话2：考试焦虑\n用户：下周考试我好紧张。\n助手：紧张是正常的。")
    assert [len(p.turns) for p in parse_dialogues(steps)] == [4, 2]
    # A list of the titles before the dialogues counts 1, 2 once already; the dialogues start at the last 对话1.
    contents = "以下是2段对话：\n- 对话1：失眠\n- 对话2：亲子\n\n"
    dialogues = "### 对话1：失眠\n用户：我睡不着\n助手：能说说吗？\n### 对话2：亲子\n用户：我和妈妈吵架了\n助手：听起来很难受。"
    assert [[t.content for t in p.turns] for p in parse_dialogues(contents + dialogues)] == [["我睡不着", "能说说吗？"], ["我和妈妈吵架了", "听起来很难受。"]]


def test_numbered_dialogues_the_second_review_found_merged():
    """An answer cut off right after its last heading, a forgotten </s>, long setting blocks and long titles merged
    every dialogue into one (headings inside the answers); a --- line before each heading stayed in the answers; the
    first turn written on the heading's line was lost; a System: line took the intro in; a ### part opening with its
    heading made prep build read the whole file pair by pair; a line of spaces after 对话1 took seconds."""
    import time

    from prep.textformat import as_dialogue_file

    answers = lambda parsed: [[t.content for t in p.turns] for p in parsed if not p.error]  # noqa: E731
    two = [["我睡不着", "能说说吗？"], ["我和妈妈吵架了", "听起来很难受。"]]
    cut_after_heading = "好的，以下是3段对话：\n\n### 对话1：考试焦虑\n用户：我睡不着\n助手：能说说吗？\n\n### 对话2：室友矛盾\n用户：我和妈妈吵架了\n助手：听起来很难受。\n\n### 对话3：失眠\n"
    assert answers(parse_dialogues(cut_after_heading)) == two
    forgot_close = "第1段对话：\n<s>Human: 我想练习\n</s><s>Assistant: 好的，比如：\n第2段对话：\n<s>Human: 你好\n</s><s>Assistant: 你好\n</s>"
    assert [p.error for p in parse_dialogues(forgot_close)] == ["truncated", None]
    settings = "\n".join(f"**{k}**：略" for k in ("背景", "来访者情况", "主要困扰", "咨询目标"))
    title = "Dialogue {n}: A college student struggling with exam anxiety before finals"
    ruled = "**对话 {n}：人际关系**"
    for heading, between in ((title, ""), ("对话{n}：", settings), (ruled, "")):
        text = (heading.format(n=1) + f"\n{between}\n用户：我睡不着\n助手：能说说吗？\n\n---\n\n" + heading.format(n=2)
                + f"\n{between}\n用户：我和妈妈吵架了\n助手：听起来很难受。\n\n---\n")
        assert answers(parse_dialogues(text)) == two, heading
    inline = "**对话1：** 用户：我睡不着\n助手：能说说吗？\n\n**对话2：** 用户：我和妈妈吵架了\n助手：听起来很难受。"
    assert answers(parse_dialogues(inline)) == two
    with_system = "System: 你是一位心理咨询师。\n\n以下是2段对话：\n对话1：\n背景：高三\n用户：我睡不着\n助手：能说说吗？\n对话2：\n用户：我和妈妈吵架了\n助手：听起来很难受。"
    assert [p.system for p in parse_dialogues(with_system)] == ["你是一位心理咨询师。"] * 2
    assert {p.system for p in parse_dialogues(with_system.replace("\n\n以下", "\n以下"))} == {"你是一位心理咨询师。"}
    tagged_system = "<s>System: 你是一位心理咨询师。\n请温和。\n</s>\n" + with_system.split("\n", 1)[1]
    assert {p.system for p in parse_dialogues(tagged_system)} == {"你是一位心理咨询师。\n请温和。"}
    file_text = "对话1：\n<s>Human: 我睡不着\n</s><s>Assistant: 能说说吗？\n</s>\n###\n对话2：\n<s>Human: 我和妈妈吵架了\n</s><s>Assistant: 听起来很难受。\n</s>\n"
    assert answers(as_dialogue_file(file_text) or []) == two
    start = time.perf_counter()
    parse_dialogues("对话1" + " " * 32_000 + "x\n用户：你好\n助手：你好")
    assert time.perf_counter() - start < 1.0  # (it took 38 s: a pattern, not a timing target)


def test_bold_right_after_a_label_leaves_no_stray_markers():
    """Human：**我觉得同事都在背后议论我。** kept the closing ** (the label took the opening one) in the question, and
    in the middle of an answer; a bold label (**Human：**) and bold inside an answer stay as they were."""
    text = ("<s>Human：**我觉得同事都在背后议论我。**\n</s><s>Assistant：**被议论的感觉很难受。**你愿意说说发生了什么吗？\n</s>"
            "<s>Human：我也说不清\n</s><s>Assistant：__慢慢来__，我在。\n</s>")
    assert [t.content for t in parse_dialogues(text)[0].turns] == [
        "我觉得同事都在背后议论我。", "**被议论的感觉很难受。**你愿意说说发生了什么吗？", "我也说不清", "__慢慢来__，我在。"]
    bold_labels = "**Human：** 我很累\n**Assistant：** 试试**4-7-8呼吸法**。"
    assert [t.content for t in parse_dialogues(bold_labels)[0].turns] == ["我很累", "试试**4-7-8呼吸法**。"]
