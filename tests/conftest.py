"""Shared fixtures: repo paths, offline environment, a tiny model built once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SEED_DIR = ROOT / "data" / "seed"
BIN = Path(sys.executable).parent

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    DISABLE_VERSION_CHECK="1",
    GRADIO_ANALYTICS_ENABLED="False",
    TOKENIZERS_PARALLELISM="false",
    CUDA_VISIBLE_DEVICES="",
)


def terminal_signals() -> None:
    """preexec_fn for a child that stands for a command typed in a terminal: Ctrl-C, Ctrl-\\ and hang-up act again.
    Run as a background job (nohup make test &, CI), the tests inherit SIGINT ignored, and so would the child."""
    import signal

    for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's console scripts first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def write_csv(path: Path, rows: list[tuple[str, ...]], header: str = "question,answer,category", encoding: str = "utf-8") -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header.split(","))
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a Llama-3-style tokenizer trained on the seed data."""
    from prep.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", [SEED_DIR], hidden_size=128)


QA = [
    ("我最近总是失眠怎么办", "先规律作息，睡前放下手机，慢慢会好起来的。", "失眠"),
    ("我考试前特别焦虑", "深呼吸，慢慢来，我在这里陪你。", "焦虑"),
    ("我和室友关系很紧张", "试着找个安静的时间，平和地聊聊彼此的需要。", "人际"),
    ("我总觉得自己不够好", "你已经很努力了，先看看自己做到的三件小事。", "自信"),
]


def derived_config(template: str, out: Path, **changes) -> Path:
    """A copy of a factory config with some keys changed (and some removed with None)."""
    config = yaml.safe_load((ROOT / "factory_configs" / template).read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    out.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return out


def run(cmd: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="session")
def merged_model(tmp_path_factory, tiny_model) -> Path:
    from prep.build import BuildOptions, build

    work = tmp_path_factory.mktemp("e2e")
    report = build([write_csv(work / "qa.csv", QA)], BuildOptions(name="mem", dataset_dir=work, test_size=0.0))
    assert report["kept"] == len(QA) == report["train"]
    train_yaml = derived_config(
        "demo_cpu_lora_sft.yaml", work / "train.yaml",
        model_name_or_path=str(tiny_model), dataset="mem_alpaca", dataset_dir=str(work), output_dir=str(work / "lora"),
        learning_rate=3.0e-3, max_steps=150, save_steps=1000, logging_steps=10, val_size=0.0, eval_strategy="no",
        load_best_model_at_end=False, eval_steps=None, per_device_eval_batch_size=None, metric_for_best_model=None,
    )
    run(["llamafactory-cli", "train", str(train_yaml)], cwd=work, timeout=600)
    log = [json.loads(line) for line in (work / "lora" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses[-1] < 0.1, f"training did not converge: {losses}"
    merge_yaml = derived_config(
        "demo_cpu_merge.yaml", work / "merge.yaml",
        model_name_or_path=str(tiny_model), adapter_name_or_path=str(work / "lora"), export_dir=str(work / "merged"),
    )
    run(["llamafactory-cli", "export", str(merge_yaml)], cwd=work, timeout=600)
    return work / "merged"
