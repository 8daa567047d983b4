"""Every input shape, read from real files written in the test, and every unreadable-file error."""

import json

import pandas as pd
import pytest

from conftest import write_csv
from prep.errors import PrepError
from prep.readers import read_path
from prep.records import Conversation, Rejected, Turn

ROWS = [("我最近总是失眠", "先规律作息，睡前放下手机。", "失眠"), ("考试前很焦虑，怎么办", "深呼吸，\n慢慢来。", "焦虑")]


def conversations(path):
    return [item for item in read_path(path) if isinstance(item, Conversation)]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_csv_in_each_encoding_reads_the_same(tmp_path, encoding):
    path = write_csv(tmp_path / "qa.csv", ROWS, encoding=encoding)
    records = conversations(path)
    assert [r.turns for r in records] == [[Turn("user", q), Turn("assistant", a)] for q, a, _ in ROWS]
    assert [r.category for r in records] == ["失眠", "焦虑"]
    assert records[1].provenance.location == "row 3"


def test_tsv_with_crlf_quoted_multiline_and_chinese_headers(tmp_path):
    path = tmp_path / "qa.tsv"
    path.write_bytes('问题\t回答\t标注人\r\n"第一行\r\n第二行"\t回答一\t张三\r\n问题二\t回答二\t李四\r\n'.encode("utf-8"))
    records = conversations(path)
    assert records[0].first_question == "第一行\n第二行"
    assert records[1].final_answer == "回答二" and records[1].provenance.annotator == "李四"


def test_tsv_quotes_inside_text_are_kept_and_a_stray_quote_swallows_no_rows(tmp_path):
    """A hand-written TSV means its quotes literally: "躺平" lost them, and an unmatched quote merged every row after
    it into one cell. A cell wholly in Excel's quotes is still unquoted."""
    path = tmp_path / "qa.tsv"
    path.write_text('问题\t回答\n"躺平"是什么意思？\t一种生活态度。\n他说"我不行\t先听他说完。\n'
                    '失眠怎么办\t"试试""4-7-8""呼吸法"\n\n最后一个问题\t最后的回答\n', encoding="utf-8")
    records = conversations(path)
    assert [(r.first_question, r.final_answer) for r in records] == [
        ('"躺平"是什么意思？', "一种生活态度。"), ('他说"我不行', "先听他说完。"),
        ("失眠怎么办", '试试"4-7-8"呼吸法'), ("最后一个问题", "最后的回答")]
    assert [r.provenance.location for r in records] == ["row 2", "row 3", "row 4", "row 6"]


@pytest.mark.parametrize("name, content, expected", [
    ("text.tsv", 'text\n"<s>Human: 我很焦虑\n</s><s>Assistant: 我理解你\n</s>"\n"<s>Human: 睡不着\n</s><s>Assistant: 规律作息\n</s>"\n',
     [(["我很焦虑", "我理解你"], "row 2"), (["睡不着", "规律作息"], "row 3")]),
    ("multiline.tsv", 'question\tanswer\n"q1"\t"第一行\n第二行\t带制表符"\nq2\ta2\n', [(["q1", "第一行\n第二行\t带制表符"], "row 2"), (["q2", "a2"], "row 3")]),
    ("tab.tsv", 'question\tanswer\tcategory\nq1\t"答案\t含tab"\nq2\ta2\tc\n', [(["q1", "答案\t含tab"], "row 2"), (["q2", "a2"], "row 3")]),
    ("blank_first.tsv", "\nquestion\tanswer\nq1\ta1\n", [(["q1", "a1"], "row 3")]),
    ("blank_first.csv", "\n\nquestion,answer\nq1,a1\n", [(["q1", "a1"], "row 4")]),
    ("twice.tsv", "question\tanswer\tanswer\nq1\t第一版\t第二版\n", [(["q1", "第一版"], "row 2")]),
    ("cr.tsv", "question\tanswer\rq1\ta1\rq2\ta2\r", [(["q1", "a1"], "row 2"), (["q2", "a2"], "row 3")]),
])
def test_excel_quoted_tsv_cells_blank_first_lines_repeated_headers_and_cr_endings(tmp_path, name, content, expected):
    """What Excel and old Macs write still reads as before the literal-quote TSV reading: quoted cells holding line
    breaks or tabs, a blank line above the header, a repeated header (the first is read), lone CR line endings."""
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert [([t.content for t in r.turns], r.provenance.location) for r in conversations(path)] == expected


def test_row_numbers_after_a_blank_line_match_the_spreadsheet_and_blank_rows_are_not_rejections(tmp_path):
    path = write_csv(tmp_path / "qa.csv", ROWS)
    path.write_text(path.read_text(encoding="utf-8").replace("\n", "\n\n,,\n", 1) + "我和父母吵架,试着沟通,人际\n", encoding="utf-8")
    items = list(read_path(path))
    assert all(isinstance(item, Conversation) for item in items)
    assert [item.provenance.location for item in items] == ["row 4", "row 5", "row 6"]


def test_big5_is_read_as_big5_and_a_file_utf8_but_for_some_lines_is_refused(tmp_path):
    """GB18030 decodes almost any bytes, so a Big5 file (Traditional Chinese) came out as mojibake (и程…) and was
    trained on; rows pasted from a GBK file into a UTF-8 one turned the UTF-8 rows into mojibake (鎴戞渶…)."""
    rows = [("我最近總是失眠，怎麼辦？", "先規律作息，睡前放下手機。", "失眠"), ("我和父母吵架了", "試著先冷靜下來，再好好溝通。", "人際")]
    records = conversations(write_csv(tmp_path / "big5.csv", rows, encoding="big5"))
    assert [(r.first_question, r.final_answer) for r in records] == [(q, a) for q, a, _ in rows]
    assert conversations(write_csv(tmp_path / "traditional_gbk.csv", rows, encoding="gbk"))[0].first_question == rows[0][0]
    symbols = [("量表的α系数为0.85，说明什么？", "┌──┐说明信度不错。", "其他")]  # GBK's symbol rows: still GBK
    assert conversations(write_csv(tmp_path / "symbols_gbk.csv", symbols, encoding="gbk"))[0].first_question == symbols[0][0]
    mixed = write_csv(tmp_path / "mixed.csv", ROWS)
    mixed.write_bytes(mixed.read_bytes() + "我和父母吵架,试着沟通,人际\n".encode("gbk"))
    with pytest.raises(PrepError, match=r"mixed.csv: line 5 is not UTF-8 although most lines are"):
        list(read_path(mixed))


def test_real_xlsx_with_instruction_output_columns(tmp_path):
    path = tmp_path / "labelled.xlsx"
    pd.DataFrame({"instruction": ["我很自卑"], "input": ["总觉得别人比我强"], "output": ["你愿意说出来就很勇敢。"]}).to_excel(path, index=False)
    [record] = conversations(path)
    assert record.first_question == "我很自卑\n总觉得别人比我强" and record.final_answer == "你愿意说出来就很勇敢。"


def test_every_sheet_of_a_workbook_is_read_and_a_sheet_without_columns_is_reported(tmp_path):
    """Annotators split batches over sheets: all are read, each row located by sheet; a notes sheet without
    question/answer columns is one rejected row that says how many rows it holds, not silently skipped."""
    path = tmp_path / "batches.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"问题": ["我很自卑"], "回答": ["你愿意说出来就很勇敢。"]}).to_excel(writer, sheet_name="第一批", index=False)
        pd.DataFrame({"问题": ["我失眠", "我焦虑"], "回答": ["先规律作息。", "深呼吸。"]}).to_excel(writer, sheet_name="第二批", index=False)
        pd.DataFrame({"说明": ["每行一条", "不要改表头"]}).to_excel(writer, sheet_name="说明", index=False)
    items = list(read_path(path))
    records = [item for item in items if isinstance(item, Conversation)]
    assert [(r.provenance.location, r.first_question) for r in records] == [
        ("sheet 第一批 row 2", "我很自卑"), ("sheet 第二批 row 2", "我失眠"), ("sheet 第二批 row 3", "我焦虑")]
    [notes] = [item for item in items if isinstance(item, Rejected)]
    assert notes.reason == "sheet_without_columns" and notes.provenance.location == "sheet 说明" and "2 rows" in notes.detail


def test_text_column_holds_one_multi_turn_conversation(tmp_path):
    cell = "<s>Human: 你好\n</s><s>Assistant: 你好呀\n</s><s>Human: 我很难过\n</s><s>Assistant: 我在听\n</s>"
    path = write_csv(tmp_path / "sft.csv", [(cell,)], header="text")
    [record] = conversations(path)
    assert [t.role for t in record.turns] == ["user", "assistant", "user", "assistant"]


def test_json_shapes_alpaca_sharegpt_openai(tmp_path):
    items = [
        {"instruction": "问题一", "input": "", "output": "回答一", "history": [["早", "早上好"]]},
        {"conversations": [{"from": "human", "value": "问题二"}, {"from": "gpt", "value": "回答二"}], "system": "系统"},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "问题三"}, {"role": "assistant", "content": "回答三"}]},
    ]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    records = conversations(path)
    assert [t.content for t in records[0].turns] == ["早", "早上好", "问题一", "回答一"]
    assert records[1].system == "系统" and records[1].final_answer == "回答二"
    assert records[2].system == "S" and records[2].first_question == "问题三"
    # A ranking dataset's [chosen, rejected] output was trained on as the text "['…', '…']"
    path.write_text(json.dumps([{"instruction": "我最近总是失眠", "output": ["固定作息。", "别管它。"]}], ensure_ascii=False), encoding="utf-8")
    [item] = list(read_path(path))
    assert isinstance(item, Rejected) and item.reason == "unknown_shape" and "output is a JSON list, not text" in item.detail


def test_broken_jsonl_line_is_a_rejected_row(tmp_path):
    path = tmp_path / "data.jsonl"
    good = json.dumps({"instruction": "问", "output": "答"}, ensure_ascii=False)
    path.write_text(f"{good}\n{{\"instruction\": \"坏的\n{good}\n[1, 2]\n", encoding="utf-8")
    items = list(read_path(path))
    assert [type(i).__name__ for i in items] == ["Conversation", "Rejected", "Conversation", "Rejected"]
    assert items[1].reason == "malformed_json" and items[1].provenance.location == "line 2"
    assert items[3].reason == "unknown_shape"


def test_jsonl_lines_break_only_at_newlines_and_openai_content_parts_are_text(tmp_path):
    """json.dumps(ensure_ascii=False) and orjson leave U+2028 / U+2029 unescaped inside strings: still one record.
    OpenAI content-part lists are their text parts; an image part is a rejected row, not a stringified list."""
    path = tmp_path / "chat.jsonl"
    items = [
        {"instruction": "第一行\u2028第二行", "output": "段落一\u2029段落二"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "我很焦虑"}, {"type": "text", "text": "怎么办"}]},
                      {"role": "assistant", "content": "我们一起看看。"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                      {"role": "assistant", "content": "好的"}]},
    ]
    path.write_text("\r\n".join(json.dumps(item, ensure_ascii=False) for item in items) + "\r\n", encoding="utf-8")
    found = list(read_path(path))
    assert [type(item).__name__ for item in found] == ["Conversation", "Conversation", "Rejected"]
    assert found[0].first_question == "第一行\u2028第二行" and found[0].final_answer == "段落一\u2029段落二"
    assert found[1].first_question == "我很焦虑\n怎么办"
    assert found[2].provenance.location == "line 3" and "image_url" in found[2].detail
    path.write_text("\r".join(json.dumps(item, ensure_ascii=False) for item in items[:2]), encoding="utf-8")  # old Mac endings
    assert [type(item).__name__ for item in read_path(path)] == ["Conversation", "Conversation"]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("cut.json", '[{"instruction": "问", "output": "答"}, {"instruction": "问', "invalid JSON at line 1"),
        ("image.xlsx", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a readable XLSX workbook"),
        ("image.csv", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG image, not a text file"),
        ("cols.csv", "name,age\n张三,3\n", "no question/answer columns (found: name, age)"),
        ("empty.csv", "", "the file is empty"),
        ("obj.json", '{"a": 1}', "expected an array of records"),
        ("notes.md", "hello", "unsupported file type"),
        # an unquoted comma (tab) in the first row shifted every column: questions lost, answers trained as questions
        ("shifted.csv", "question,answer,category\n我很焦虑,试试深呼吸, 每天练习,焦虑\n我失眠了,固定作息,失眠\n", "line 2 has more cells than the header"),
        ("shifted.tsv", "question\tanswer\n我很焦虑\t试试\t深呼吸\n我失眠了\t固定作息\n", "line 2 has more cells than the header"),
    ],
)
def test_unreadable_files_raise_one_clear_sentence(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(PrepError) as info:
        list(read_path(path))
    assert expected in str(info.value) and str(path) in str(info.value)


def test_folder_reads_every_supported_file(tmp_path):
    write_csv(tmp_path / "a.csv", ROWS[:1])
    (tmp_path / "b.txt").write_text("<s>Human: 问\n</s><s>Assistant: 答\n</s>", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("not data", encoding="utf-8")
    items = list(read_path(tmp_path))
    assert len(items) == 2 and all(isinstance(i, Conversation) for i in items)
    assert not any(isinstance(i, Rejected) for i in items)


def test_a_txt_file_of_hash_separated_dialogues_reads_each_dialogue_whole(tmp_path):
    """Multi-turn teacher output (the multi-turn template's ### separators) became context-free pairs."""
    path = tmp_path / "dialogues.txt"
    path.write_text("<s>Human: 我失恋了\n</s><s>Assistant: 我在听。\n</s><s>Human: 我好难过\n</s><s>Assistant: 难过是正常的。\n</s>\n"
                    "###\n<s>Human: 考试没考好\n</s><s>Assistant: 愿意说说吗？\n</s>\n", encoding="utf-8")
    records = conversations(path)
    assert [len(r.turns) for r in records] == [4, 2]
    assert records[0].turns[2] == Turn("user", "我好难过") and records[1].provenance.location == "conversation 2"


def test_a_hash_divider_inside_an_answer_keeps_a_txt_file_pair_by_pair(tmp_path):
    """A ### line used as a divider in one answer is not a dialogue separator: the pairs stay pairs, whole."""
    path = tmp_path / "pairs.txt"
    path.write_text("Human: 我总是拖延怎么办？\nAssistant: 拖延常常和焦虑有关。\n###\n先定一个5分钟的小目标。\n"
                    "Human: 考试前很紧张\nAssistant: 试试深呼吸。\nHuman: 和室友关系不好\nAssistant: 可以坦诚沟通。\n", encoding="utf-8")
    records = conversations(path)
    assert [len(r.turns) for r in records] == [2, 2, 2]
    assert records[0].final_answer == "拖延常常和焦虑有关。\n###\n先定一个5分钟的小目标。"


def test_an_intro_and_outro_around_hash_separated_dialogues_keep_them_whole(tmp_path):
    """The teacher's one-line intro (好的，以下是2组对话：) before the first ### sent the file pair by pair: follow-up
    questions became training pairs without their context."""
    path = tmp_path / "dialogues.txt"
    path.write_text("好的，以下是2组对话：\n###\nHuman: 我失恋了\nAssistant: 我在听。\nHuman: 她总管我穿什么。\nAssistant: 这让你很压抑。\n"
                    "###\nHuman: 考试没考好\nAssistant: 愿意说说吗？\n###\n以上是2组对话，希望对你有帮助。\n", encoding="utf-8")
    assert [len(r.turns) for r in conversations(path)] == [4, 2]
