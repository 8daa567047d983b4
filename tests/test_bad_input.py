"""Bad input that a robustness sweep of every command found (a helper trying what users produce: files saved the
wrong way, junk files in folders, paths that cannot be written): each is read as meant, or refused with one
sentence and exit code 2 before anything is written, never a traceback."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tool_env, write_csv
from prep.build import BuildOptions, build
from prep.distill import DistillConfig, distill
from prep.errors import PrepError
from prep.evaluate import EndpointModel, EvalOptions, load_plan, run_eval
from prep.readers import read_path, supported_files
from prep.records import Conversation
from prep.review import review

ROWS = [("最近总是失眠，躺下就开始想工作的事", "先试着把担心写在纸上，再去睡。", "失眠"),
        ("和室友因为作息吵了一架，现在很尴尬", "可以找个平静的时候聊聊彼此的需要。", "人际"),
        ("考试前一晚紧张得手心出汗", "紧张说明你在乎，试试慢慢地深呼吸。", "学业"),
        ("刚搬到新城市，周末一个人不知道做什么", "可以从一个小的兴趣小组开始认识人。", "孤独")]


def prep_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prep.cli", *args], capture_output=True, text=True, timeout=120,
                          env=tool_env(), cwd=cwd)


def one_sentence(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit 2, one 'error:' line naming the phrases, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(p in lines[0] for p in phrases), result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_json_array_saved_as_jsonl_is_read_as_the_array(tmp_path):
    """json.dump(rows, open("x.jsonl", "w")): line by line it was one rejected row (62 with indent=2) and the build
    went on without the data; LLaMA-Factory's own loader reads such a file."""
    rows = [{"instruction": question, "output": answer} for question, answer, _ in ROWS]
    for indent in (None, 2):
        path = tmp_path / f"x{indent}.jsonl"
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=indent), encoding="utf-8")
        found = list(read_path(path))
        assert [rec.first_question for rec in found if isinstance(rec, Conversation)] == [q for q, _, _ in ROWS]
        assert len(found) == 4 and found[0].provenance.location == "item 1"


def test_junk_files_in_an_input_folder_are_not_read(tmp_path):
    """Excel's lock file of an open workbook, macOS's resource forks and __MACOSX folder, Jupyter's checkpoint copies
    and .git stopped a build ('not a readable XLSX workbook', 'cannot decode the bytes') or trained rows twice."""
    real = write_csv(tmp_path / "labels.csv", ROWS)
    (tmp_path / "~$labels.xlsx").write_bytes(b"\x00lock")
    (tmp_path / "._labels.csv").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    for folder in ("__MACOSX", ".ipynb_checkpoints", ".git"):
        (tmp_path / folder).mkdir()
        write_csv(tmp_path / folder / "labels-checkpoint.csv", ROWS)
    draft = write_csv(tmp_path / "~draft.csv", ROWS[:1])  # only Office's ~$ lock files are junk
    assert supported_files(tmp_path) == [real, draft]
    draft.unlink()
    report = build([tmp_path], BuildOptions(name="j", dataset_dir=tmp_path / "out", test_size=0))
    assert report["rows_in"] == 4 and report["kept"] == 4


def test_distill_refuses_a_one_line_dataset_and_bad_options_before_writing_anything(tmp_path):
    """A compact json.dump of a dataset (one line, no final newline) passed as a torn first journal line, and the run's
    lines were appended to it; refused options still made the journal's folders and lock file; a NaN temperature was
    sent, refused by the endpoint and retried as a bad response for 27 s."""
    mine = tmp_path / "my.json"
    mine.write_text(json.dumps([{"instruction": "问", "output": "答"}], ensure_ascii=False), encoding="utf-8")
    before = digest(mine)
    config = DistillConfig(out=mine, base_url="http://127.0.0.1:9/v1", requests=1, max_attempts=1)
    with pytest.raises(PrepError, match="holds something other than a prep distill journal"):
        distill(config)
    assert digest(mine) == before and not (tmp_path / "my.json.lock").exists()
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"request_id": "r1", "ind', encoding="utf-8")  # a crash in the first write: a journal
    from prep.distill import _check_is_journal
    _check_is_journal(torn)
    # ... and after a resume closed that torn line with a newline and went on (a BOM too): still a journal
    torn.write_text('\ufeff{"request_id": "r1", "ind\n{"request_id": "r2", "status": "ok", "pairs": []}\n', encoding="utf-8")
    _check_is_journal(torn)

    new = tmp_path / "new" / "sub" / "j.jsonl"
    for change, message in [({"multi_turn_ratio": 2.0}, "--multi-turn-ratio 2.0"), ({"processes": 0}, "--processes 0"),
                            ({"temperature": float("nan")}, "--temperature nan"), ({"temperature": -3.0}, "--temperature -3.0"),
                            ({"price_in_per_m": -5.0}, "--price-in -5.0")]:
        with pytest.raises(PrepError, match=message):
            distill(DistillConfig(out=new, base_url="http://127.0.0.1:9/v1", requests=1, **change))
    assert not (tmp_path / "new").exists()


def test_paths_that_cannot_be_written_or_read_are_one_sentence(tmp_path):
    """Operating-system errors on a path (a folder where a file goes, a file where a folder goes) were tracebacks in
    report-run, review and build; now one sentence naming the path, and nothing written."""
    run = tmp_path / "run"
    (run / "lora").mkdir(parents=True)
    (run / "lora" / "trainer_log.jsonl").write_text('{"current_steps": 1, "total_steps": 1, "loss": 1.0}\n', encoding="utf-8")
    (run / "report.md").mkdir()
    one_sentence(prep_cli("report-run", str(run)), f"{run / 'report.md'}: is a directory")
    assert sorted(p.name for p in run.iterdir()) == ["lora", "report.md"]  # no temporary file left

    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text(json.dumps({"case_id": "C1", "question": "睡不着怎么办？", "sample": 0, "reply_guarded": "先规律作息。"},
                                     ensure_ascii=False) + "\n", encoding="utf-8")
    decisions = tmp_path / "d.jsonl"
    decisions.write_text('{"case_id": "C1", "accept": [0]}\n', encoding="utf-8")
    one_sentence(prep_cli("review", str(candidates), "--reviewer", "张", "--accept", str(decisions), "--out-dir", str(candidates / "sub")),
                 str(candidates / "sub"), "not a directory")

    data = write_csv(tmp_path / "qa.csv", ROWS)
    (tmp_path / "ds" / "dataset_info.json").mkdir(parents=True)
    one_sentence(prep_cli("build", str(data), "--name", "x", "--dataset-dir", str(tmp_path / "ds")), "dataset_info.json")
    assert not (tmp_path / "ds" / "data").exists()


def test_eval_refuses_an_output_folder_it_cannot_write_before_asking_anything(tmp_path):
    """--out under a file failed after the (possibly 8B) model had loaded."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    model = EndpointModel("http://127.0.0.1:9/v1", "m", "系统", 16, 0.7, 0.9)
    model.load = lambda: pytest.fail("the model was loaded before --out was checked")
    with pytest.raises(PrepError, match=r"--out .*afile/ev: cannot be written \(.*afile is not a folder\)"):
        run_eval(model, load_plan(limit_per_kind=1)[:1], EvalOptions(tmp_path / "afile" / "ev"))


def test_candidates_with_a_malformed_history_and_an_incomplete_tokenizer_are_one_sentence(tmp_path):
    """A hand-edited candidate's history ("你好", [["你好"]], [[1, null]]) crashed review on a correction; a tokenizer
    folder with only its config crashed build with transformers' 57-line traceback."""
    decisions = tmp_path / "d.jsonl"
    decisions.write_text('{"case_id": "C1", "correction": "改写的回答。"}\n', encoding="utf-8")
    for history in ("你好", [["你好"]], [[1, None]]):
        candidates = tmp_path / "c.jsonl"
        candidates.write_text(json.dumps({"case_id": "C1", "question": "睡不着怎么办？", "sample": 0, "reply_guarded": "先规律作息。",
                                          "history": history}, ensure_ascii=False) + "\n", encoding="utf-8")
        with pytest.raises(PrepError, match=r"line 1 is not a candidate .*a history of \[question, answer\] pairs"):
            review(candidates, "张", decisions, tmp_path / "fb")
    assert not (tmp_path / "fb").exists()

    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}', encoding="utf-8")
    data = write_csv(tmp_path / "qa.csv", ROWS)
    with pytest.raises(PrepError, match=r"--tokenizer .*tok: cannot be loaded \(.*\); expected a complete tokenizer folder"):
        build([data], BuildOptions(name="t", dataset_dir=tmp_path / "out", tokenizer=tokenizer))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--hidden-size", "-4"], ["--hidden-size", "63"], ["--layers", "0"]])
def test_tiny_model_shapes_that_cannot_be_built_are_one_sentence(tmp_path, option):
    result = prep_cli("tiny-model", str(tmp_path / "m"), "--data", str(ROOT / "data" / "seed"), *option)
    one_sentence(result, "expected a hidden size that is a multiple of 8")
    assert not (tmp_path / "m").exists()


def test_table_mistakes_say_what_is_wrong(tmp_path):
    """A UTF-8 file with a NUL byte was 'cannot decode the bytes as text; expected UTF-8'; a comma file named .tsv
    said only which columns it found; with both answer and output columns, output was dropped without a word."""
    nul = tmp_path / "nul.csv"
    nul.write_bytes("question,answer\n你好,世界\n坏\x00行,答\n".encode("utf-8"))
    with pytest.raises(PrepError, match=r"nul.csv: line 3 holds a NUL byte \(1 in the file\)"):
        list(read_path(nul))
    nul.write_bytes(b"question,answer\nhi,there\x00\n")  # mostly ASCII: was read as UTF-16 mojibake
    with pytest.raises(PrepError, match=r"nul.csv: line 2 holds a NUL byte"):
        list(read_path(nul))
    commas = tmp_path / "commas.tsv"
    commas.write_text("question,answer,category\n你好,世界,x\n", encoding="utf-8")
    with pytest.raises(PrepError, match="the file looks comma-separated"):
        list(read_path(commas))
    both = write_csv(tmp_path / "both.csv", [("你好", "世界", "另一个回答")], header="question,answer,output")
    with pytest.raises(PrepError, match="columns 'answer', 'output' all name the answer and hold different text"):
        list(read_path(both))
    empty_twin = write_csv(tmp_path / "twin.csv", [("你好", "世界", "")], header="question,answer,output")
    assert [rec.final_answer for rec in read_path(empty_twin)] == ["世界"]  # an empty second column is no conflict
    same = write_csv(tmp_path / "same.csv", [("你好", "世界 ", "世界")], header="question,answer,output")
    assert [rec.final_answer for rec in read_path(same)] == ["世界"]
    names = write_csv(tmp_path / "names.csv", [("小明", "睡不着怎么办", "先规律作息")], header="用户,问题,回答")
    assert [(rec.first_question, rec.final_answer) for rec in read_path(names)] == [("睡不着怎么办", "先规律作息")]


def test_a_ragged_csv_is_one_line_naming_the_row(tmp_path):
    """pandas' message ended in a line break, which split the sentence in two."""
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("question,answer\n你好,世界\n多,了,三,个,格\n", encoding="utf-8")
    one_sentence(prep_cli("build", str(ragged), "--name", "r", "--dataset-dir", str(tmp_path)),
                 "malformed CSV", "Expected 2 fields in line 3, saw 5); expected one header row")
