"""Every YAML under factory_configs/ goes through LLaMA-Factory's own argument parser.

A typo or an incompatible option then fails CI instead of a GPU run. The only
change made for this CPU machine: bf16 is switched off (LLaMA-Factory refuses
bf16 without a GPU); everything else is parsed as written.
"""

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
    if config.get("do_train"):
        config["bf16"] = False
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
