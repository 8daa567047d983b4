"""The whole chain for real: prep build -> llamafactory-cli train -> llamafactory-cli export -> chat.py.

A tiny model is LoRA-trained at a high learning rate on a handful of Q&A; the
merged model must then reproduce the trained answers through chat.py. This is
what catches template, label-masking and stop-token mismatches between
LLaMA-Factory's ``llama3`` template and the tokenizer's chat template.
"""

from __future__ import annotations

import json
import os
import signal
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QA, ROOT, derived_config, run, terminal_signals, tool_env
from prep.metrics import rouge_l

pytestmark = pytest.mark.slow

def chat(model: Path, lines: list[str], flags: tuple[str, ...] = ()) -> list[dict]:
    """Feed lines to chat.py on stdin (not a TTY) and parse its JSON answers."""
    result = run(
        [sys.executable, "chat.py", "--model", str(model), "--json", "--temperature", "0", "--repetition-penalty", "1.0",
         "--max-new-tokens", "64", *flags],
        cwd=ROOT, input="\n".join(lines) + "\n", timeout=300,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("flags", [(), ("--compile",)], ids=["eager", "compiled"])
def test_merged_model_reproduces_trained_answers_and_stops(merged_model, flags):
    lines = []
    for question, _, _ in QA:
        lines += [question, "/reset"]
    answers = chat(merged_model, lines, flags)
    assert [a["reply"] for a in answers] == [answer for _, answer, _ in QA]
    assert all(a["safety"] == {"crisis": False, "referral_added": False} for a in answers)
    # Stopped on <|eot_id|>: the token count is the answer's length, not max_new_tokens.
    assert all(0 < a["tokens"] < 64 for a in answers)


def test_prompt_flag_answers_once(merged_model):
    question, answer, _ = QA[1]
    result = run([sys.executable, "chat.py", "--model", str(merged_model), "--prompt", question, "--temperature", "0",
                  "--repetition-penalty", "1.0"], cwd=ROOT, timeout=300)
    assert result.stdout.strip() == answer


def test_crisis_guard_adds_referral_whatever_the_model_says(merged_model):
    """Each message is judged alone and with the user's three before it: the referral follows a crisis for three
    more replies, then stops; /reset forgets it."""
    answers = chat(merged_model, ["我真的不想活了，想一了百了", "你不懂", "今天天气不错", "你不懂", "嗯", "/reset", "你不懂"])
    assert [a["safety"]["crisis"] for a in answers] == [True, True, True, True, False, False]
    assert answers[0]["safety"] == {"crisis": True, "referral_added": True}
    assert all("12356" in a["reply"] and "400-161-9995" in a["reply"] for a in answers[:4])
    assert not any("12356" in a["reply"] for a in answers[4:])


def test_chat_refuses_unfinished_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, "chat.py", "--model", str(tmp_path), "--prompt", "你好"], cwd=ROOT,
                            env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: no weights (*.safetensors); the export did not finish."


def test_adapter_without_merging_gives_the_same_answers(merged_model, tiny_model):
    question, answer, _ = QA[2]
    result = run([sys.executable, "chat.py", "--model", str(tiny_model), "--adapter", str(merged_model.parent / "lora"),
                  "--prompt", question, "--temperature", "0", "--repetition-penalty", "1.0"], cwd=ROOT, timeout=300)
    assert result.stdout.strip() == answer


def test_prefix_cache_changes_nothing_but_speed(merged_model):
    from prep.chat import ChatSession, GenerationOptions

    options = GenerationOptions(temperature=0, max_new_tokens=24, repetition_penalty=1.0)
    replies = []
    for reuse in (True, False):
        session = ChatSession(merged_model, options=options, reuse_cache=reuse)
        replies.append([session.ask(q).text for q, _, _ in QA] + [session.ask("我不想活了").text])
    assert replies[0] == replies[1]


def test_history_is_trimmed_from_the_oldest_turn(merged_model):
    from prep.chat import ChatSession, GenerationOptions

    session = ChatSession(merged_model, options=GenerationOptions(max_new_tokens=16), context_tokens=160)
    for i in range(12):
        session.history += [{"role": "user", "content": f"第{i}个问题"}, {"role": "assistant", "content": f"第{i}个回答"}]
    prompt = session.tokenizer.decode(session._prompt_ids("最新的问题")[0])
    assert prompt.count(session.system) == 1 and "最新的问题" in prompt
    assert "第11个回答" in prompt and "第0个问题" not in prompt
    assert session._prompt_ids("最新的问题").shape[1] <= 160 - 16


def test_conversation_is_saved_only_on_request(merged_model, tmp_path):
    saved = tmp_path / "talk.json"
    before = set(tmp_path.iterdir())
    run([sys.executable, str(ROOT / "chat.py"), "--model", str(merged_model), "--temperature", "0", "--max-new-tokens", "24"],
        cwd=tmp_path, input=f"{QA[0][0]}\n/save {saved}\n/exit\n", timeout=300)
    assert set(tmp_path.iterdir()) - before == {saved}
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] and data["messages"][0]["content"] == QA[0][0]


def test_template_mismatch_is_refused(merged_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(merged_model, copy)
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    (copy / "chat_template.jinja").write_text(chatml, encoding="utf-8")
    result = subprocess.run([sys.executable, "chat.py", "--model", str(copy), "--prompt", "你好"], cwd=ROOT, env=tool_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "does not match LLaMA-Factory's 'llama3' template" in result.stderr and "Traceback" not in result.stderr


def test_run_sft_demo_then_checks_that_fail_fast(tmp_path):
    """`bash run_sft.sh demo` in a fresh copy of the repo (as `make demo` runs it), then every
    pre-run check on the finished run: exit 2 and one clear sentence each, before any model loads."""
    repo = tmp_path / "repo"
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "models", "__pycache__", ".pytest_cache", "*.egg-info", "artifacts")
    shutil.copytree(ROOT, repo, ignore=skip)

    def sft(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "run_sft.sh", *args], cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=600)

    for generated in (repo / "data").glob("*.json*"):
        generated.unlink()
    demo = sft("demo")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "Merged model: runs/demo/merged" in demo.stdout
    lora, merged = repo / "runs" / "demo" / "lora", repo / "runs" / "demo" / "merged"
    assert (merged / "config.json").exists() and any(merged.glob("*.safetensors"))
    assert (lora / "training_loss.png").stat().st_size > 1000 and (lora / "training_eval_loss.png").exists()
    log = [json.loads(line) for line in (lora / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in entry for entry in log), "val_size/eval_steps produced no eval loss"
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses[-1] < losses[0] - 2, f"the demo did not learn: {losses}"
    registry = json.loads((repo / "dataset_info.json").read_text(encoding="utf-8"))
    assert {"psy_seed_alpaca", "psy_seed_sharegpt", "psy_seed_test"} <= registry.keys()
    # The answer to the training question it asks is the trained answer: with 48 rows in 300 steps most answers were
    # noise (ROUGE-L 0.09 for this one), which looked like a broken pipeline.
    reply = demo.stdout.split("==> Asking the merged model", 1)[1].split("\n", 1)[1].split("\nLoss curve:")[0].strip()
    trained = json.loads((repo / "data" / "psy_seed_alpaca.json").read_text(encoding="utf-8"))[0]["output"]
    assert rouge_l(reply, trained) >= 0.5, (reply, trained)
    manifest = json.loads((repo / "runs" / "demo" / "run_manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "finished" and manifest["exit_code"] == 0
    assert manifest["datasets"] and all(len(h) == 64 for h in manifest["datasets"].values())
    assert manifest["packages"]["llamafactory"] == "0.9.5" and "commit" in manifest["git"]
    report = (repo / "runs" / "demo" / "report.md").read_text(encoding="utf-8")
    assert "best eval loss" in report and "training_loss.png" in report
    # The merged model is the last, most trained one: the held-out rows' loss only rises on the tiny model, so the
    # "best" checkpoint by it was step 100 of 300 (train loss 1.1 instead of 0.31).
    state = json.loads((lora / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 300 and not state.get("best_model_checkpoint"), state.get("best_model_checkpoint")

    # A dry run writes nothing, and the demo keeps a psy_seed built with more data (prep build data/seed data/feedback).
    dataset = repo / "data" / "psy_seed_alpaca.json"
    items = json.loads(dataset.read_text(encoding="utf-8"))
    dataset.write_text(json.dumps(items + [{**items[0], "instruction": "审核后加入的问题"}], ensure_ascii=False), encoding="utf-8")
    before = dataset.read_bytes(), (repo / "models" / "tiny-llama3" / "config.json").stat().st_mtime_ns
    dry = sft("demo", "--dry-run")
    assert dry.returncode == 0 and "all checks passed" in dry.stdout, dry.stderr[-1000:]
    assert (dataset.read_bytes(), (repo / "models" / "tiny-llama3" / "config.json").stat().st_mtime_ns) == before

    shutil.copytree(lora, repo / "runs" / "by hand" / "lora")  # llamafactory-cli train run by hand: no manifest
    (repo / "my.yaml").write_text((repo / "factory_configs" / "demo_cpu_lora_sft.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    elsewhere = subprocess.run(["bash", str(repo / "run_sft.sh"), "--config", "my.yaml", "--output", "out", "--dry-run"],
                               cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert elsewhere.returncode == 2 and f"--config {tmp_path}/my.yaml: no such file" in elsewhere.stderr  # the caller's folder
    (tmp_path / "my.yaml").write_bytes((repo / "my.yaml").read_bytes())
    elsewhere = subprocess.run(["bash", str(repo / "run_sft.sh"), "--config", "my.yaml", "--output", "out", "--dry-run"],
                               cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert elsewhere.returncode == 0 and f"would train into {tmp_path}/out/lora" in elsewhere.stdout, elsewhere.stderr[-1000:]

    cpu_config = ["--config", "factory_configs/demo_cpu_lora_sft.yaml"]
    cases = [
        (cpu_config, "holds a finished run; pass --force"),
        (["demo", "--output", "runs/demo"], "holds a finished run; pass --force"),  # a folder you name is not the demo's own
        (cpu_config + ["--output", "runs/by hand"], "holds a finished run; pass --force"),
        (cpu_config + ["--dataset", "nope_alpaca"], "dataset 'nope_alpaca' is not in"),
        (cpu_config + ["--model", "/no/such/model", "--force"], "model folder '/no/such/model' not found"),
        (cpu_config + ["--output", "runs/fresh", "--resume"], "--resume: no checkpoint-*"),
        ([], "needs a CUDA GPU"),
    ]
    for args, message in cases:
        result = sft(*args, "--dry-run")
        assert result.returncode == 2, (args, result.stdout[-500:], result.stderr[-500:])
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-1000:])
    ok = sft(*cpu_config, "--resume", "--dry-run")
    assert ok.returncode == 0 and "all checks passed" in ok.stdout


def test_run_sft_resume_continues_from_the_last_checkpoint(tmp_path, tiny_model):
    repo = tmp_path / "repo"
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "models", "__pycache__", ".pytest_cache", "*.egg-info", "artifacts")
    shutil.copytree(ROOT, repo, ignore=skip)
    (repo / "models").mkdir()
    shutil.copytree(tiny_model, repo / "models" / "tiny-llama3")

    def config(name: str, steps: int) -> str:
        derived_config("demo_cpu_lora_sft.yaml", repo / name, max_steps=steps, save_steps=10, eval_steps=10, logging_steps=5)
        return name

    run = repo / "runs" / "r #1: 中文"  # YAML would read ' #' as a comment and ': ' as a mapping

    def sft(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", "run_sft.sh", *args, "--output", "runs/r #1: 中文"], cwd=repo, env=tool_env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result

    sft("--config", config("short.yaml", 20))
    assert (run / "merged" / "config.json").is_file() and (run / "merge_config.yaml").is_file()
    resumed = sft("--config", config("long.yaml", 30), "--resume", "--no-merge")
    assert "Resuming training from runs/r #1: 中文/lora/checkpoint-20" in resumed.stdout + resumed.stderr
    # the hint names flags chat.py has, and its path, shell-quoted, pastes whole (a folder with spaces and #)
    hint = resumed.stdout.split("not merged: ", 1)[1].split("\n", 1)[0].rsplit(")", 1)[0]
    assert shlex.split(hint) == ["python", "chat.py", "--model", "BASE_MODEL", "--adapter", "runs/r #1: 中文/lora"], hint
    state = json.loads((run / "lora" / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 30
    log = [json.loads(line) for line in (run / "lora" / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [entry["current_steps"] for entry in log if "loss" in entry] == [5, 10, 15, 20, 25, 30]  # not restarted at step 1

    # Ctrl-C during training (SIGINT to the terminal's process group) and kill PID (SIGTERM to the script alone, which
    # waited for training to end and then called the finished training interrupted): the training stops at once, the
    # manifest says interrupted (not 'running' for ever), exit 130, nothing of the stage left running.
    # A hang-up (terminal closed, SSH dropped) too: the stage runs in a session of its own and would not get it.
    stops = (("ctrl-c", lambda pid: os.killpg(pid, signal.SIGINT)), ("kill", lambda pid: os.kill(pid, signal.SIGTERM)),
             ("hang-up", lambda pid: os.killpg(pid, signal.SIGHUP)))
    for name, stop in stops:
        # As from a terminal: the signals at their defaults (a test run started with '&' or nohup inherits them
        # ignored, and bash cannot trap a signal ignored on entry).
        job = subprocess.Popen(["bash", "run_sft.sh", "--config", config(f"{name}.yaml", 2000), "--output", f"runs/{name}", "--no-merge"],
                               cwd=repo, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=terminal_signals)
        log = repo / "runs" / name / "lora" / "trainer_log.jsonl"
        try:
            deadline = time.time() + 300
            while not log.exists() and time.time() < deadline and job.poll() is None:
                time.sleep(0.5)
            # The trainer does not inherit SIGINT ignored from bash's background job: kill -INT of it works by hand.
            trainers = subprocess.run(["pgrep", "-f", f"runs/{name}/run_config.yaml"], capture_output=True, text=True).stdout.split()
            assert trainers and not any(_ignores_sigint(pid) for pid in trainers), (name, trainers)
            stop(job.pid)
            _, stderr = job.communicate(timeout=120)
            left = subprocess.run(["pgrep", "-f", f"runs/{name}/run_config.yaml"], capture_output=True, text=True)
            assert not left.stdout.strip(), f"{name}: training still running as {left.stdout}"
        finally:  # a failure must not leave a training run behind to slow every later test
            subprocess.run(["pkill", "-KILL", "-f", f"runs/{name}/run_config.yaml"], check=False)
            job.kill()
        manifest = json.loads((repo / "runs" / name / "run_manifest.json").read_text(encoding="utf-8"))
        assert job.returncode == 130 and manifest["status"] == "interrupted (train)", (name, job.returncode, manifest["status"], stderr[-1500:])
        # --resume is offered only when there is a checkpoint to continue from (it then failed), --force otherwise
        checkpoint = any((repo / "runs" / name / "lora").glob("checkpoint-*"))
        assert ("re-run with --resume" if checkpoint else "re-run with --force to start over") in stderr, stderr[-800:]
        steps = [json.loads(line)["current_steps"] for line in log.read_text(encoding="utf-8").splitlines()]
        assert max(steps) < 2000, name  # stopped, not run to the end

    # kill -9 of the script (an IDE's hard stop, timeout -k): nothing can be recorded, but the training must not go on
    # alone, detached in a session of its own, with nobody to wait for it.
    job = subprocess.Popen(["bash", "run_sft.sh", "--config", config("kill-9.yaml", 2000), "--output", "runs/kill-9", "--no-merge"],
                           cwd=repo, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (repo / "runs" / "kill-9" / "lora" / "trainer_log.jsonl").exists() and time.time() < deadline and job.poll() is None:
            time.sleep(0.5)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
        deadline = time.time() + 30
        while subprocess.run(["pgrep", "-f", "runs/kill-9/run_config.yaml"], capture_output=True).stdout and time.time() < deadline:
            time.sleep(0.5)
        left = subprocess.run(["pgrep", "-af", "runs/kill-9/run_config.yaml"], capture_output=True, text=True)
        assert not left.stdout.strip(), f"kill -9: training still running as {left.stdout}"
    finally:
        subprocess.run(["pkill", "-KILL", "-f", "runs/kill-9/run_config.yaml"], check=False)


def _ignores_sigint(pid: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # it ended meanwhile
        return False
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def test_terminal_session_survives_bad_saves_odd_input_and_keeps_stdout_json(merged_model, tmp_path):
    """A /save that cannot be written ended the session with a traceback; /save replaced any existing file; a line starting
    with / that is not a command (/我不想活了) was swallowed as one, so the crisis guard never ran; a BOM from a
    Windows file and bytes that are not UTF-8 crashed or hid /exit; with --json, command notes broke the JSON lines."""
    notes, saved = tmp_path / "notes.txt", tmp_path / "talk.json"
    notes.write_text("my notes", encoding="utf-8")
    lines = [f"\ufeff{QA[0][0]}", f"/save {notes}/x.json", f"/save {notes}", f"/save {saved}", "/我不想活了", f"/save {saved}"]
    stdin = "\n".join(lines).encode("utf-8") + b"\n\xff\xfe" + QA[1][0].encode("utf-8") + b"\n/exit\n" + QA[2][0].encode("utf-8") + b"\n"
    result = subprocess.run([sys.executable, "chat.py", "--model", str(merged_model), "--json", "--temperature", "0",
                             "--repetition-penalty", "1.0", "--max-new-tokens", "48"],
                            cwd=ROOT, env=tool_env(), input=stdin, capture_output=True, timeout=300)
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in stderr, stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines() if line.strip()]  # JSON only
    assert len(answers) == 3  # the BOM line, /我不想活了, the undecodable line; nothing after /exit
    assert answers[0]["reply"] == QA[0][1] and answers[1]["safety"] == {"crisis": True, "referral_added": True}
    assert notes.read_text(encoding="utf-8") == "my notes" and "已存在" in stderr and "无法保存" in stderr
    assert (saved.stat().st_mode & 0o777) == 0o600
    assert [m["content"] for m in json.loads(saved.read_text(encoding="utf-8"))["messages"]][2] == "/我不想活了"


@pytest.mark.parametrize("flags, expected", [
    (["--repetition-penalty", "0"], "error: --repetition-penalty 0.0: expected more than 0 (1 is none)."),
    (["--top-p", "1.5", "--temperature", "-1"], "error: --temperature -1.0: expected 0 (greedy) or more; --top-p 1.5: expected more than 0 and at most 1."),
    (["--max-new-tokens", "0"], "error: --max-new-tokens 0: expected 1 or more."),
])
def test_bad_generation_options_are_one_sentence_before_the_model_loads(merged_model, flags, expected):
    result = subprocess.run([sys.executable, "chat.py", "--model", str(merged_model), "--prompt", "你好", *flags], cwd=ROOT,
                            env=tool_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == expected


def test_a_corrupt_model_folder_a_bad_port_and_a_closed_pipe_end_without_a_traceback(merged_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(merged_model, broken)
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    result = subprocess.run([sys.executable, "chat.py", "--model", str(broken), "--prompt", "你好"], cwd=ROOT, env=tool_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {broken}: cannot load the ") and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "chat.py", "--web", "--port", "99999"], cwd=ROOT, env=tool_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "'99999' is not a port" in result.stderr
    reader = subprocess.Popen([sys.executable, "chat.py", "--model", str(merged_model), "--prompt", QA[0][0]], cwd=ROOT,
                              env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # as `| head -c 0` would: the reply has nowhere to go
    assert reader.wait(timeout=300) == 0 and b"Traceback" not in reader.stderr.read()
