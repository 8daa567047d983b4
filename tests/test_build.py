"""prep build end to end on real files: accounting, outputs, registry, split, errors."""

import functools
import itertools
import json
import random
import subprocess
import sys

import pytest

from conftest import ROOT, tool_env, write_csv
from prep.build import BuildOptions, build
from prep.dedup import DedupConfig, dedup, shingles
from prep.errors import PrepError
from prep.records import Conversation, Provenance, Turn

REFERRAL = "请马上联系全国心理援助热线 12356。"


def assert_accounting(report):
    assert report["rows_in"] == report["kept"] + report["duplicates"] + report["rejected"]
    assert report["kept"] == report["train"] + report["test"]


def messy_inputs(tmp_path):
    rows = [
        ("我最近总是失眠，怎么办？", "先规律作息，睡前放下手机。", "失眠"),
        ("我最近总是失眠，怎么办？", "先规律作息，睡前放下手机。", "失眠"),  # exact duplicate
        ("我最近总是失眠，怎么办啊？", "试试放松训练。", "失眠"),  # near duplicate of row 2
        ("我和同事相处不好，我的电话是13812345678", "可以先从一次真诚的沟通开始。", "人际"),  # PII
        ("我不想活了", "多出去走走就好了。", "危机干预"),  # crisis without referral
        ("我不想活了，真的撑不下去", "我很担心你。" + REFERRAL, "危机干预"),  # crisis with referral
        ("只有问题没有回答", "", "焦虑"),  # empty turn
        ("复读机", "哈" * 200, "其他"),  # repetition
        ("作为学生，我总是拖延", "作为一个AI语言模型，我理解你的感受。拖延常常和害怕失败有关。", "学业"),
    ]
    csv_path = write_csv(tmp_path / "in" / "labelled.csv", rows) if (tmp_path / "in").mkdir() is None else None
    jsonl = tmp_path / "in" / "extra.jsonl"
    jsonl.write_text(json.dumps({"instruction": "我很自卑", "output": "你已经很努力了。"}, ensure_ascii=False) + "\n{broken\n", encoding="utf-8")
    return [csv_path, jsonl]


def test_build_accounts_for_every_row_and_writes_everything(tmp_path):
    report = build(messy_inputs(tmp_path), BuildOptions(name="t", dataset_dir=tmp_path, test_size=0.0))
    assert_accounting(report)
    assert (report["rows_in"], report["kept"], report["duplicates"], report["rejected"]) == (11, 5, 2, 4)
    assert report["rejected_by_reason"] == {"malformed_json": 1, "empty_turn": 1, "repetition": 1, "crisis_without_referral": 1}
    assert report["duplicates_by_kind"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert report["pii_replaced"] == {"mobile": 1}

    data = tmp_path / "data"
    train = json.loads((data / "t_alpaca.json").read_text(encoding="utf-8"))
    outputs = {item["instruction"]: item["output"] for item in train}
    assert "我和同事相处不好，我的电话是[手机号]" in outputs
    assert outputs["作为学生，我总是拖延"] == "我理解你的感受。拖延常常和害怕失败有关。"
    assert all(item["system"] and item["input"] == "" and item["history"] == [] for item in train)
    sharegpt = json.loads((data / "t_sharegpt.json").read_text(encoding="utf-8"))
    assert len(sharegpt) == len(train) and sharegpt[0]["conversations"][0]["from"] == "human"

    rejected = [json.loads(line) for line in (data / "t_rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rejected) == report["duplicates"] + report["rejected"]
    assert {"reason", "provenance"} <= rejected[0].keys()
    crisis = next(r for r in rejected if r["reason"] == "crisis_without_referral")
    assert crisis["provenance"]["location"] == "row 6" and crisis["provenance"]["source"].endswith("labelled.csv")
    assert crisis["provenance"]["origin"] == "labelled" and crisis["provenance"]["created"].startswith("20")
    assert crisis["raw"] == "<s>Human: 我不想活了\n</s><s>Assistant: 多出去走走就好了。\n</s>"  # the answer to look at, not only the question
    assert json.loads((data / "t_report.json").read_text(encoding="utf-8"))["rows_in"] == 11
    assert "rows_in 11 = kept 5 + duplicates 2 + rejected 4" in (data / "t_report.md").read_text(encoding="utf-8")
    assert (data / "t_lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_registry_has_full_mappings_and_keeps_other_entries(tmp_path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}), encoding="utf-8")
    report = build(messy_inputs(tmp_path), BuildOptions(name="t", dataset_dir=tmp_path, test_size=0.4))
    assert_accounting(report)
    registry = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert registry["mine"] == {"file_name": "mine.json"}
    assert set(registry) == {"mine", "t_alpaca", "t_sharegpt", "t_test"}
    assert registry["t_alpaca"]["columns"] == {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}

    from llamafactory.data.parser import get_dataset_list

    alpaca, sharegpt, test = get_dataset_list(["t_alpaca", "t_sharegpt", "t_test"], str(tmp_path))
    assert (alpaca.prompt, alpaca.query, alpaca.response, alpaca.system, alpaca.history) == ("instruction", "input", "output", "system", "history")
    assert (sharegpt.messages, sharegpt.system, sharegpt.user_tag, sharegpt.assistant_tag) == ("conversations", "system", "human", "gpt")
    assert test.formatting == "alpaca"


def test_corrupt_registry_stops_before_anything_is_written(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"mine": ', encoding="utf-8")
    with pytest.raises(PrepError, match="not valid JSON"):
        build(messy_inputs(tmp_path), BuildOptions(name="t", dataset_dir=tmp_path))
    assert (tmp_path / "dataset_info.json").read_text(encoding="utf-8") == '{"mine": '
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "有中文"])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(PrepError, match="--name"):
        build(messy_inputs(tmp_path), BuildOptions(name=name, dataset_dir=tmp_path))


def test_split_is_deterministic_and_disjoint(tmp_path):
    rows = [(f"第{i}个问题：关于{topic}的困扰{i * 7919 % 1000}", f"回答{i}", topic) for i, topic in enumerate(["失眠", "焦虑", "人际", "学业"] * 25)]
    inputs = [write_csv(tmp_path / "many.csv", rows)]
    first = build(inputs, BuildOptions(name="a", dataset_dir=tmp_path / "one", test_size=0.2, dedup=DedupConfig(near=False)))
    second = build(inputs, BuildOptions(name="a", dataset_dir=tmp_path / "two", test_size=0.2, dedup=DedupConfig(near=False)))
    assert_accounting(first)
    assert_accounting(second)
    read = lambda d, f: json.loads((tmp_path / d / "data" / f).read_text(encoding="utf-8"))
    assert read("one", "a_test.json") == read("two", "a_test.json") and read("one", "a_alpaca.json") == read("two", "a_alpaca.json")
    train_q = {x["instruction"] for x in read("one", "a_alpaca.json")}
    test_q = {x["instruction"] for x in read("one", "a_test.json")}
    assert not train_q & test_q and len(train_q) + len(test_q) == 100
    assert 8 <= len(test_q) <= 35


def test_hand_labelled_row_wins_over_distilled_duplicate():
    def rec(origin, answer):
        return Conversation([Turn("user", "我最近总是失眠怎么办"), Turn("assistant", answer)], Provenance("f", "row 1", origin=origin))

    result = dedup([rec("distilled", "蒸馏的回答"), rec("labelled", "人工的回答")])
    kept, duplicates = result.kept, result.duplicates
    assert [r.final_answer for r in kept] == ["人工的回答"]
    assert duplicates[0].provenance.origin == "distilled" and duplicates[0].reason == "near_duplicate"


def test_questions_of_symbols_only_are_not_one_question():
    """？, …… and 😭😭😭 share no character but were near duplicates of each other (Jaccard 1.00): stripped of
    punctuation they were all the empty text."""
    records = [Conversation([Turn("user", question), Turn("assistant", "我在听。")], Provenance("chat.jsonl", f"line {i + 1}"))
               for i, question in enumerate(["？", "……", "😭😭😭", "😭 😭😭", "你好"])]
    result = dedup(records)
    assert [r.first_question for r in result.kept] == ["？", "……", "😭😭😭", "你好"]
    assert [d.provenance.location for d in result.duplicates] == ["line 4"]


def test_near_dedup_merges_paraphrases_but_keeps_distinct_questions_in_one_sentence_frame():
    """Questions from one frame (a teacher's topic grid, an intake form) share most of their characters. Sharing
    an LSH bucket must not merge them (it did: 82% of the near-duplicate merges on synthetic questions had
    Jaccard < 0.7); only character-bigram Jaccard >= 0.7 may, and paraphrases above it must still be caught."""
    people = ["高三学生", "程序员", "两个孩子的妈妈", "护士", "退休教师", "研究生", "外卖骑手", "公司中层"]
    worries = ["工作压力特别大", "和父母总是吵架", "刚刚分手", "成绩一落千丈", "每天晚上都睡不着", "同事排挤我", "孩子沉迷手机", "对未来很迷茫"]
    feelings = ["心里很难受", "焦虑得喘不过气", "提不起劲", "特别委屈", "控制不住想哭"]
    grams = functools.lru_cache(maxsize=None)(lambda text: frozenset(shingles(text, 2)))
    jaccard = lambda a, b: len(grams(a) & grams(b)) / len(grams(a) | grams(b))
    combos = list(itertools.product(people, itertools.permutations(worries, 2), feelings))
    random.Random(0).shuffle(combos)
    distinct: list[str] = []
    for person, (first, second), feeling in combos[:1000]:
        question = f"我是{person}，最近{first}，又赶上{second}，{feeling}，我该怎么办？"
        if all(jaccard(question, other) < 0.7 for other in distinct):
            distinct.append(question)
    paraphrases = [question.replace("，", "，真的", 1) for question in distinct[:60]]
    assert len(distinct) >= 300 and all(jaccard(p, q) >= 0.7 for p, q in zip(paraphrases, distinct))

    records = [Conversation([Turn("user", question), Turn("assistant", "先照顾好自己。")], Provenance("grid.jsonl", f"line {i + 1}"))
               for i, question in enumerate(distinct + paraphrases)]
    result = dedup(records)
    assert [r.first_question for r in result.kept] == distinct
    assert [d.reason for d in result.duplicates] == ["near_duplicate"] * len(paraphrases)
    for number, duplicate in enumerate(result.duplicates):
        assert duplicate.detail.startswith(f"duplicate of grid.jsonl line {number + 1} (Jaccard 0.")


def test_thousands_of_copies_of_one_greeting_are_one_text_to_near_dedup():
    """Real chat logs repeat 你好 thousands of times with different replies: one kept, the rest near duplicates of
    it (Jaccard 1.00), without comparing every pair of copies (20,000 copies are 200 million pairs)."""
    records = [Conversation([Turn("user", "你好！" if i % 2 else "你好"), Turn("assistant", f"你好，我在。{i}")], Provenance("log.jsonl", f"line {i + 1}"))
               for i in range(20_000)]
    records.append(Conversation([Turn("user", "我最近总是失眠"), Turn("assistant", "先规律作息。")], Provenance("log.jsonl", "line 20001")))
    result = dedup(records)
    assert [r.provenance.location for r in result.kept] == ["line 1", "line 20001"]
    assert len(result.duplicates) == 19_999
    assert {d.detail for d in result.duplicates} == {"duplicate of log.jsonl line 1 (Jaccard 1.00)"}


def test_personal_data_is_scrubbed_from_system_prompts_and_from_rejected_rows(tmp_path):
    """A phone number in a record's own system prompt never reaches the training files, and the raw text of a row
    rejected before the scrub step (here: an answer too short) is scrubbed in NAME_rejected.jsonl."""
    items = [
        {"conversations": [{"from": "human", "value": "我最近很焦虑"}, {"from": "gpt", "value": "我们一起看看原因。"}],
         "system": "你是咨询师小王，电话13812345678，邮箱wang@example.com"},
        {"instruction": "我的身份证号是11010519491231002X，帮我看看", "output": "好"},
    ]
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    build([path], BuildOptions(name="p", dataset_dir=tmp_path, test_size=0))
    written = "".join(file.read_text(encoding="utf-8") for file in (tmp_path / "data").glob("p_*.json*"))
    for secret in ("13812345678", "wang@example.com", "11010519491231002X"):
        assert secret not in written
    rejected = [json.loads(line) for line in (tmp_path / "data" / "p_rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["reason"] for r in rejected] == ["too_short"] and "帮我看看" in rejected[0]["raw"]


def test_a_long_run_of_near_identical_questions_is_merged_into_its_first_in_linear_work():
    """5,000 questions that differ by a number share every LSH bucket: comparing all pairs is 12.5 million
    comparisons (the first exact-Jaccard version took ~15 s for 2,000). Each is merged into a kept question it
    really is >= 0.7 similar to, and near-identical questions are not all kept."""
    from prep.dedup import canonical_shingles, canonical_text

    question = lambda i: f"我今年{i}岁，最近工作压力很大，晚上总是睡不着，白天也没精神，我该怎么办？"
    records = [Conversation([Turn("user", question(i)), Turn("assistant", "先照顾好自己。")], Provenance("run.jsonl", f"line {i + 1}"))
               for i in range(5000)]
    result = dedup(records)
    assert len(result.kept) <= 5 and len(result.kept) + len(result.duplicates) == 5000
    by_location = {r.provenance.location: r.first_question for r in records}
    grams = lambda text: canonical_shingles(canonical_text(text), 2)
    for duplicate in result.duplicates[::97]:
        twin = by_location[duplicate.detail.split("run.jsonl ")[1].split(" (")[0]]
        mine, theirs = grams(duplicate.raw), grams(twin)
        assert len(mine & theirs) / len(mine | theirs) >= 0.7


def test_cli_bad_input_is_one_sentence_and_nonzero_exit(tmp_path):
    bad = tmp_path / "photo.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    result = subprocess.run([sys.executable, "-m", "prep.cli", "build", str(bad), "--name", "x", "--dataset-dir", str(tmp_path)],
                            capture_output=True, text=True, env=tool_env(), cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bad}: this is a PNG image, not a text file; expected UTF-8 or GBK text."]
    assert "Traceback" not in result.stderr and not (tmp_path / "dataset_info.json").exists()


def test_web_ui_lists_the_registered_datasets(tmp_path):
    """What `llamafactory-cli webui` shows in its dataset dropdown when Data dir is the registry's folder."""
    from llamafactory.webui.control import list_datasets

    build(messy_inputs(tmp_path), BuildOptions(name="t", dataset_dir=tmp_path, test_size=0.4))
    dropdown = list_datasets(str(tmp_path), "Supervised Fine-Tuning")
    names = {choice[0] if isinstance(choice, tuple) else choice for choice in dropdown.choices}
    assert {"t_alpaca", "t_sharegpt", "t_test"} <= names


def test_token_limit_with_a_local_tokenizer(tmp_path, tiny_model):
    rows = [("短问题", "短回答。", "其他"), ("长问题", "".join(f"第{i}条建议各不相同。" for i in range(60)), "其他")]
    path = write_csv(tmp_path / "len.csv", rows)
    report = build([path], BuildOptions(name="tok", dataset_dir=tmp_path, test_size=0, tokenizer=tiny_model, cutoff_len=120))
    assert_accounting(report)
    assert report["rejected_by_reason"] == {"too_many_tokens": 1}
    assert report["lengths"]["tokens"]["count"] == 1 and report["lengths"]["tokens"]["max"] <= 120
    with pytest.raises(PrepError, match="no tokenizer_config.json"):
        build([path], BuildOptions(name="tok", dataset_dir=tmp_path, tokenizer=tmp_path))


def test_cli_token_limit_counts_the_system_prompt_the_row_is_trained_with(tmp_path, tiny_model):
    """A row whose turns fit --cutoff-len but which, with the default system prompt the writers add, is longer
    than that once templated would be cut silently by LLaMA-Factory: prep build --tokenizer rejects it."""
    from transformers import AutoTokenizer

    from prep.prompts import DEFAULT_SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    question, answer = "我最近总是失眠", "".join(f"第{i}条建议各不相同。" for i in range(8))
    templated = lambda system: len(tokenizer.apply_chat_template(
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question},
                                                                      {"role": "assistant", "content": answer}])["input_ids"])
    cutoff = templated(DEFAULT_SYSTEM_PROMPT) - 5
    assert templated(None) < cutoff  # the turns alone fit
    path = write_csv(tmp_path / "len.csv", [("你好", "你好，我在。", "其他"), (question, answer, "失眠")])
    result = subprocess.run([sys.executable, "-m", "prep.cli", "build", str(path), "--name", "tok", "--dataset-dir", str(tmp_path),
                             "--test-size", "0", "--tokenizer", str(tiny_model), "--cutoff-len", str(cutoff)],
                            capture_output=True, text=True, env=tool_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "data" / "tok_report.json").read_text(encoding="utf-8"))
    assert report["kept"] == 1 and report["rejected_by_reason"] == {"too_many_tokens": 1}


def test_split_keeps_the_test_share_when_questions_share_sentence_frames(tmp_path):
    """Near-duplicate grouping must not chain merely similar questions into one cluster (all on one side)."""
    frames = ["我最近总是{}，怎么办？", "因为{}，我晚上睡不着，该怎么调整？", "{}的时候，我应该跟谁聊聊？", "我和家人因为{}吵了一架，心里很难受"]
    concerns = ["考试焦虑", "失眠多梦", "工作压力大", "和室友合不来", "失恋", "被领导批评", "找不到工作", "父母离婚", "体重焦虑",
                "社交恐惧", "拖延严重", "孩子不听话", "婆媳矛盾", "异地恋", "被朋友误会", "考研失败", "身体不好", "经济困难",
                "升职无望", "宠物去世", "搬家适应不了", "网络暴力", "长期加班", "对未来迷茫", "总是自我怀疑", "同事排挤",
                "亲人生病", "毕业分离", "创业失败", "婚礼筹备"]
    rows = [(frame.format(concern), "先照顾好自己，我们一起慢慢梳理。", "综合") for frame in frames for concern in concerns]
    report = build([write_csv(tmp_path / "frames.csv", rows)], BuildOptions(name="f", dataset_dir=tmp_path, test_size=0.25))
    assert report["kept"] >= 90  # a long frame around a short concern can be a true near-duplicate
    assert 0.12 <= report["test"] / report["kept"] <= 0.4, (report["test"], report["kept"])


def test_multi_turn_dialogues_split_by_what_they_say_and_a_shared_question_stays_on_one_side(tmp_path):
    """Dialogues were keyed on their first question, so every dialogue opening with 你好 went to one side, and a
    test question could be trained on as a later turn of a training dialogue. A pleasantry every dialogue shares
    (谢谢你，我会试试的) must not chain them all together either."""
    concerns = ["下周就要期末考试了，我一翻书就心慌手抖", "连续三个月凌晨三点才睡着，白天头昏脑涨",
                "项目截止日期太紧，老板天天催进度", "室友半夜打游戏吵得我没法休息", "谈了五年的女朋友突然提出分手",
                "开会时被领导当众批评方案写得差", "投了两百份简历都没有收到面试通知", "爸妈上个月办完了离婚手续",
                "一到人多的聚会场合就紧张得说不出话", "论文拖到最后一天才开始动笔写", "儿子上初中以后完全不听我的话",
                "婆婆总是插手我们怎么带孩子", "男朋友在国外读书，时差让我们越来越少联系", "好朋友误以为我在背后说她坏话",
                "第二次考研还是差三分没过线", "房贷加上车贷压得喘不过气来", "养了十二年的猫上周去世了",
                "在网上发了一条视频被很多人骂", "每周加班到深夜，周末也要回消息", "毕业两年了还不知道自己想做什么",
                "总觉得自己做什么都不如别人好", "新来的同事几个人抱团孤立我", "外婆住院检查出了不好的结果", "辞职开的奶茶店半年就倒闭了"]
    turn = lambda role, text: {"from": role, "value": text}
    dialogues = [{"conversations": [turn("human", "你好"), turn("gpt", "你好，我在听。"),
                                    turn("human", concern), turn("gpt", "我们一起想想办法。"),
                                    turn("human", "谢谢你，我会试试的"), turn("gpt", "不客气，随时来聊。")]} for concern in concerns]
    singles = [{"instruction": concern, "output": "先照顾好自己。"} for concern in concerns[:8]]
    path = tmp_path / "dialogues.json"
    path.write_text(json.dumps(dialogues + singles, ensure_ascii=False), encoding="utf-8")
    for seed in range(4):
        report = build([path], BuildOptions(name="m", dataset_dir=tmp_path / str(seed), test_size=0.3, seed=seed))
        assert report["kept"] == len(dialogues) + len(singles)
        sides = {}
        for side, name in (("train", "m_alpaca.json"), ("test", "m_test.json")):
            for item in json.loads((tmp_path / str(seed) / "data" / name).read_text(encoding="utf-8")):
                user = [question for question, _ in item["history"]] + [item["instruction"]]
                sides.setdefault(user[-2] if len(user) > 1 else user[0], set()).add(side)
        assert all(len(found) == 1 for found in sides.values()), (seed, sides)
        test_dialogues = sum(sides[concern] == {"test"} for concern in concerns)
        assert 0 < test_dialogues < len(concerns), (seed, test_dialogues)


def test_dialogues_chained_by_shared_follow_ups_do_not_form_one_group():
    """Each dialogue shares a follow-up with the next (那如果晚上又紧张了怎么办): linked transitively, 1,000
    dialogues became one group and the test split held 0 or all of them."""
    from prep.split import split, split_groups

    follow_up = "那如果第{}次见面的时候又紧张了怎么办".format
    records = [Conversation([Turn("user", f"我有一个困扰很久的问题，编号{i}"), Turn("assistant", "我理解"),
                             Turn("user", follow_up(i)), Turn("assistant", "一起看看"),
                             Turn("user", follow_up(i + 1)), Turn("assistant", "慢慢来")], Provenance("x", f"row {i}"))
               for i in range(1000)]
    groups = split_groups(records)
    assert max(groups.count(first) for first in set(groups)) <= 10
    for seed in range(3):
        assert 50 <= len(split(records, 0.1, seed, groups)[1]) <= 160


def test_a_lopsided_split_is_reported_with_its_cause():
    from prep.split import share_warning

    assert share_warning(100, 10, 0.1, list(range(100))) is None
    assert share_warning(100, 0, 0.0, None) is None
    message = share_warning(100, 0, 0.1, [0] * 90 + list(range(90, 100)))
    assert message.startswith("the test split holds 0.0% of the kept rows instead of about 10%")
    assert "90 rows (90%)" in message


def test_a_rebuild_from_an_earlier_builds_training_file_is_told_why_nothing_is_held_out(tmp_path):
    """The split is a stable hash of each question and the seed, so a training file built again with the same seed
    holds nothing out; the warning blamed templated or repeated questions."""
    first = build([ROOT / "data" / "seed"], BuildOptions(name="s", dataset_dir=tmp_path))
    assert first["test"] > 0 and not first["warnings"]
    again = build([tmp_path / "data" / "s_alpaca.json"], BuildOptions(name="again", dataset_dir=tmp_path))
    assert again["test"] == 0 and any("were the inputs an earlier build's training file?" in w for w in again["warnings"])
    other_seed = build([tmp_path / "data" / "s_alpaca.json"], BuildOptions(name="again", dataset_dir=tmp_path, seed=7))
    assert other_seed["test"] > 0 and not any("earlier build" in w for w in other_seed["warnings"])


def test_outputs_get_the_usual_file_mode_not_the_temp_files_0600(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the dataset, report and registry must get the mode any file the
    user writes gets (0644 under umask 022), or a shared training box cannot read them; a rewrite keeps the mode."""
    import os
    import stat

    from prep.fsutil import atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "new.json", b"[]")
    existing = tmp_path / "kept_mode.json"
    existing.write_bytes(b"{}")
    existing.chmod(0o640)
    atomic_write_bytes(existing, b"[]")
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640


def test_report_counts_the_crisis_conversations_actually_kept(tmp_path):
    """Three copies of one crisis exchange (answered with a referral) are one kept conversation, and the report
    says one, not the three the crisis rule saw before dedup."""
    row = ("我真的不想活了", f"听到你这么说我很担心你。{REFERRAL}", "危机干预")
    report = build([write_csv(tmp_path / "crisis.csv", [row, row, row, ("我最近总是失眠", "先规律作息。", "失眠")])],
                   BuildOptions(name="c", dataset_dir=tmp_path, test_size=0.0))
    assert report["kept"] == 2 and report["crisis_conversations_kept"] == 1


def test_a_build_that_fails_while_writing_leaves_every_old_output_in_place(tmp_path, monkeypatch):
    """Each file was atomic but the set was not: a full disk while writing the test split left the new train file
    beside the old test file (questions on both sides). Now the outputs and the registry change together or not."""
    import prep.build

    first = write_csv(tmp_path / "one.csv", [(f"第一批问题{i}：我最近总是失眠", "先规律作息。", "失眠") for i in range(20)])
    build([first], BuildOptions(name="s", dataset_dir=tmp_path, test_size=0.3))
    before = {path.name: path.read_bytes() for path in (tmp_path / "data").iterdir()}
    before["dataset_info.json"] = (tmp_path / "dataset_info.json").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prep.build, "write_histogram", disk_full)  # after train, sharegpt, test and rejected
    second = write_csv(tmp_path / "two.csv", [(f"第二批问题{i}：考试前很焦虑", "深呼吸。", "焦虑") for i in range(20)])
    with pytest.raises(PrepError, match="No space left on device; expected a writable folder. Nothing was replaced"):
        build([second], BuildOptions(name="s", dataset_dir=tmp_path, test_size=0.3))
    after = {path.name: path.read_bytes() for path in (tmp_path / "data").iterdir()}
    after["dataset_info.json"] = (tmp_path / "dataset_info.json").read_bytes()
    assert after == before  # no temp file left either


def test_a_build_with_nothing_to_train_or_nowhere_to_write_replaces_nothing(tmp_path):
    """An empty input, or one whose rows were all rejected, replaced a good dataset with [] and registered it (exit 0;
    LLaMA-Factory then refuses it); a file where the data folder should be, or a folder in an output's place, was a
    traceback, and the second left the outputs half new, half old."""
    good = write_csv(tmp_path / "good.csv", [("我最近总是失眠怎么办", "先规律作息，睡前放下手机。", "失眠"),
                                             ("考试前很焦虑", "深呼吸，把复习拆成小块。", "焦虑")])
    build([good], BuildOptions(name="g", dataset_dir=tmp_path, test_size=0))
    data = tmp_path / "data"
    before = {path.name: path.read_bytes() for path in data.iterdir()}
    registry = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(registry) == {"g_alpaca", "g_sharegpt"}  # nothing held out: no empty g_test for LLaMA-Factory to refuse
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "crisis.csv").write_text("question,answer\n我不想活了,睡一觉就好了。\n", encoding="utf-8")
    for bad, message in ((tmp_path / "empty.jsonl", "none of the 0 rows read was kept"),
                         (tmp_path / "crisis.csv", "rejected 1: crisis_without_referral 1")):
        with pytest.raises(PrepError, match=message):
            build([bad], BuildOptions(name="g", dataset_dir=tmp_path, test_size=0))
    (tmp_path / "afile").write_text("", encoding="utf-8")
    with pytest.raises(PrepError, match="cannot write the outputs under .*afile: Not a directory"):
        build([good], BuildOptions(name="g", dataset_dir=tmp_path / "afile"))
    (data / "g_report.md").unlink()
    (data / "g_report.md").mkdir()
    with pytest.raises(PrepError, match="a folder is in the place of an output"):
        build([good], BuildOptions(name="g", dataset_dir=tmp_path, test_size=0.5, seed=3))
    (data / "g_report.md").rmdir()
    assert {path.name: path.read_bytes() for path in data.iterdir() if path.name != "g_report.md"} == {
        name: content for name, content in before.items() if name != "g_report.md"}
    # A later build with a test split registers it again; one without removes the stale entry.
    build([good], BuildOptions(name="g", dataset_dir=tmp_path, test_size=0.5, seed=3))
    assert "g_test" in json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    build([good], BuildOptions(name="g", dataset_dir=tmp_path, test_size=0))
    assert "g_test" not in json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    # ... and the command does not say it registered one (it did, then warned that it had not)
    result = subprocess.run([sys.executable, "-m", "prep.cli", "build", str(good), "--name", "g", "--dataset-dir", str(tmp_path),
                             "--test-size", "0"], capture_output=True, text=True, timeout=120, env=tool_env())
    assert result.returncode == 0 and "registered g_alpaca, g_sharegpt in" in result.stdout and "g_test in" not in result.stdout


def test_cutoff_len_without_a_tokenizer_is_refused(tmp_path):
    """--cutoff-len without --tokenizer was ignored: no row was checked, and the user believed they were."""
    data = write_csv(tmp_path / "qa.csv", [("我最近总是失眠怎么办", "先规律作息。", "失眠")])
    result = subprocess.run([sys.executable, "-m", "prep.cli", "build", str(data), "--name", "c", "--dataset-dir", str(tmp_path),
                             "--cutoff-len", "512"], capture_output=True, text=True, timeout=120, env=tool_env())
    assert result.returncode == 2 and "--cutoff-len 512 needs --tokenizer" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()
