"""Every YAML under factory_configs/ goes through LLaMA-Factory's own argument parser.

A typo or an incompatible option then fails CI instead of a GPU run. What this
CPU machine cannot check is set aside, and only that: bf16 and tf32 are switched
off (refused without a GPU), so are Liger's Triton GPU kernels, the DeepSpeed JSON is checked on its own (DeepSpeed
needs CUDA to install), and a vLLM chat config is parsed with the huggingface
backend (vLLM needs CUDA); everything else is parsed as written.
"""

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

CONFIGS = sorted((ROOT / "factory_configs").glob("*.yaml"))


def test_the_expected_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"llama3_lora_sft.yaml", "llama3_merge.yaml", "llama3_chat.yaml",
            "demo_cpu_lora_sft.yaml", "demo_cpu_merge.yaml", "demo_cpu_chat.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_with_llamafactory(path: Path):
    from llamafactory.hparams import get_infer_args, get_train_args

    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config.get("trust_remote_code") is False
    assert config.get("template") == "llama3"
    for gpu_only in ("bf16", "tf32", "enable_liger_kernel"):
        if config.get(gpu_only):
            config[gpu_only] = False
    if "deepspeed" in config:
        deepspeed = json.loads((ROOT / config.pop("deepspeed")).read_text(encoding="utf-8"))
        assert deepspeed["zero_optimization"]["stage"] in (2, 3) and deepspeed["bf16"]["enabled"] == "auto"
    if config.get("infer_backend") == "vllm":
        config["infer_backend"] = "huggingface"
    if config.get("do_train") or config.get("do_predict"):
        model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
        assert data_args.dataset_dir == "." and finetuning_args.finetuning_type == "lora"
        if training_args.load_best_model_at_end:
            assert training_args.save_steps % training_args.eval_steps == 0
            assert training_args.save_strategy == training_args.eval_strategy
    else:
        get_infer_args(config)


def test_seed_recipe_is_the_real_config():
    config = yaml.safe_load((ROOT / "factory_configs" / "llama3_lora_sft.yaml").read_text(encoding="utf-8"))
    expected = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "learning_rate": 5.0e-5,
                "lr_scheduler_type": "cosine", "num_train_epochs": 3.0, "max_samples": 3000, "val_size": 0.1,
                "eval_steps": 100, "save_steps": 100, "load_best_model_at_end": True, "plot_loss": True, "bf16": True,
                "lora_target": "all", "model_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"}
    assert {k: config.get(k) for k in expected} == expected
