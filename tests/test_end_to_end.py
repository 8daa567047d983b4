"""The whole chain for real: prep build -> llamafactory-cli train -> llamafactory-cli export -> chat.py.

A tiny model is LoRA-trained at a high learning rate on a handful of Q&A; the
merged model must then reproduce the trained answers through chat.py. This is
what catches template, label-masking and stop-token mismatches between
LLaMA-Factory's ``llama3`` template and the tokenizer's chat template.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QA, ROOT, run, tool_env

pytestmark = pytest.mark.slow

def chat(model: Path, lines: list[str]) -> list[dict]:
    """Feed lines to chat.py on stdin (not a TTY) and parse its JSON answers."""
    result = run(
        [sys.executable, "chat.py", "--model", str(model), "--json", "--temperature", "0", "--repetition-penalty", "1.0", "--max-new-tokens", "64"],
        cwd=ROOT, input="\n".join(lines) + "\n", timeout=300,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_merged_model_reproduces_trained_answers_and_stops(merged_model):
    lines = []
    for question, _, _ in QA:
        lines += [question, "/reset"]
    answers = chat(merged_model, lines)
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
    [answer] = chat(merged_model, ["我真的不想活了，想一了百了"])
    assert answer["safety"] == {"crisis": True, "referral_added": True}
    assert "12356" in answer["reply"] and "400-161-9995" in answer["reply"]


def test_chat_refuses_unfinished_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = subprocess.run([sys.executable, "chat.py", "--model", str(tmp_path), "--prompt", "你好"], cwd=ROOT,
                            env=tool_env(), capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: no weights (*.safetensors); the export did not finish."


def test_run_sft_demo_builds_trains_merges_and_answers(tmp_path):
    """`bash run_sft.sh demo` in a fresh copy of the repo, as `make demo` runs it."""
    repo = tmp_path / "repo"
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "models", "__pycache__", ".pytest_cache", "*.egg-info")
    shutil.copytree(ROOT, repo, ignore=skip)
    for generated in (repo / "data").glob("*.json*"):
        generated.unlink()
    result = run(["bash", "run_sft.sh", "demo"], cwd=repo, timeout=900)
    assert "Merged model: runs/demo/merged" in result.stdout
    lora, merged = repo / "runs" / "demo" / "lora", repo / "runs" / "demo" / "merged"
    assert (merged / "config.json").exists() and any(merged.glob("*.safetensors"))
    assert (lora / "training_loss.png").stat().st_size > 1000 and (lora / "training_eval_loss.png").exists()
    log = [json.loads(line) for line in (lora / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_loss" in entry for entry in log), "val_size/eval_steps produced no eval loss"
    registry = json.loads((repo / "dataset_info.json").read_text(encoding="utf-8"))
    assert {"psy_seed_alpaca", "psy_seed_sharegpt", "psy_seed_test"} <= registry.keys()
    # The chat answer is the line after the question banner; it must be non-empty text.
    after = result.stdout.split("==> Asking the merged model:", 1)[1].splitlines()
    assert after[1].strip(), result.stdout[-2000:]
