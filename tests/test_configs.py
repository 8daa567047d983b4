"""Every YAML under factory_configs/ goes through LLaMA-Factory's own argument parser.

A typo or an incompatible option then fails CI instead of a GPU run. What this
CPU machine cannot check is set aside, and only that: bf16 and tf32 are switched
off (refused without a GPU), so are Liger's Triton GPU kernels, the DeepSpeed JSON is checked on its own (DeepSpeed
needs CUDA to install), and a vLLM chat config is parsed with the huggingface
backend (vLLM needs CUDA); everything else is parsed as written.
"""

import json
import re
import subprocess
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


def test_the_pre_run_check_reads_every_registry_llamafactory_reads(tmp_path):
    """A GBK registry (hand-edited in Chinese), a dataset folder and a hub-hosted entry are what LLaMA-Factory
    accepts; an entry that is not an object is one sentence, not a traceback."""
    from prep.errors import PrepError
    from prep.runs import check_datasets

    (tmp_path / "data" / "folder_ds").mkdir(parents=True)
    (tmp_path / "data" / "folder_ds" / "part1.json").write_text('[{"instruction": "问", "output": "答"}]', encoding="utf-8")
    registry = {"folder_ds": {"file_name": "data/folder_ds", "columns": {"prompt": "instruction", "response": "output"}},
                "hub_ds": {"hf_hub_url": "someone/psy-data", "columns": {"prompt": "instruction", "response": "output"}},
                "注释": "手写的说明", "bad": "data/x.json"}
    (tmp_path / "dataset_info.json").write_bytes(json.dumps(registry, ensure_ascii=False).encode("gbk"))
    files = check_datasets({"dataset_dir": str(tmp_path), "dataset": "folder_ds,hub_ds"})
    assert files == [tmp_path / "data" / "folder_ds" / "part1.json"]
    with pytest.raises(PrepError, match="dataset 'bad' in .* is str, not an entry"):
        check_datasets({"dataset_dir": str(tmp_path), "dataset": "folder_ds,bad"})
    # An empty list passed as a dataset (LLaMA-Factory refuses it at train start: "corresponds to no data")
    (tmp_path / "data" / "empty.json").write_text("[]\n", encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"empty": {"file_name": "data/empty.json"}}), encoding="utf-8")
    with pytest.raises(PrepError, match="dataset 'empty': .*empty.json is missing or empty"):
        check_datasets({"dataset_dir": str(tmp_path), "dataset": "empty"})


def test_the_config_check_in_a_child_process_reports_llamafactorys_sentence(tiny_model, tmp_path):
    """With several GPUs visible the parse runs in a child that sees one (LLaMA-Factory's parser refuses a process
    torchrun did not launch); no GPU here, so the child is called directly: a good config passes, a bad one is
    LLaMA-Factory's own sentence."""
    from prep.errors import PrepError
    from prep.runs import _parse_in_child

    config = yaml.safe_load((ROOT / "factory_configs" / "demo_cpu_lora_sft.yaml").read_text(encoding="utf-8"))
    config.update(model_name_or_path=str(tiny_model), output_dir=str(tmp_path / "lora"), dataset_dir=str(ROOT))
    _parse_in_child(config)
    with pytest.raises(PrepError, match="LLaMA-Factory rejects the config: .*load_best_model_at_end"):
        _parse_in_child({**config, "save_steps": 7, "eval_steps": 5, "load_best_model_at_end": True})


def test_a_dry_run_before_anything_is_built_still_checks_what_it_can_and_writes_nothing(tmp_path):
    """In a fresh clone (no datasets, no demo model) --dry-run said 'would build' and exited 0 before any other check:
    an output path under a file or a missing --model passed, and the real run then failed with a traceback."""
    from conftest import tool_env

    repo = _repo_copy(tmp_path)
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    (tmp_path / "a file").write_text("x", encoding="utf-8")

    def dry(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "run_sft.sh", *args, "--dry-run"], cwd=repo, env={**tool_env(), "HF_HUB_OFFLINE": "1"},
                              capture_output=True, text=True, timeout=300)

    ok = dry("demo")
    assert ok.returncode == 0 and "would first build data/psy_seed_*.json" in ok.stdout and "all checks passed" in ok.stdout, ok.stderr[-800:]
    cases = [(("demo", "--output", str(tmp_path / "a file" / "run")), "is a file, not a folder"),
             (("--config", "factory_configs/demo_cpu_lora_sft.yaml", "--model", "/no/such/model"), "model folder '/no/such/model' not found"),
             (("demo", "--dataset", "psy_seed_alpaca,nope_alpaca"), "dataset 'nope_alpaca' is not in"),
             (("demo", "--dataset", "psy_seed_alpacca"), "dataset 'psy_seed_alpacca' is not in")]  # not one build registers
    for args, message in cases:
        result = dry(*args)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr[-800:])
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before  # a dry run writes nothing


def _repo_copy(tmp_path: Path) -> Path:
    """The repo's tracked files, without generated datasets, models or runs (a fresh clone)."""
    import shutil
    import subprocess

    repo = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    for generated in (repo / "data").glob("*.json*"):
        generated.unlink()
    return repo


def _sft(repo: Path, *args: str):
    import subprocess

    from conftest import tool_env

    return subprocess.run(["bash", "run_sft.sh", *args], cwd=repo, env={**tool_env(), "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)


def _demo_config(path: Path, **changes) -> Path:
    config = yaml.safe_load((ROOT / "factory_configs" / "demo_cpu_lora_sft.yaml").read_text(encoding="utf-8"))
    path.write_text(yaml.safe_dump({**config, **changes}, allow_unicode=True), encoding="utf-8")
    return path


def test_the_demo_never_builds_its_tiny_model_over_a_model_prep_did_not_build(tmp_path):
    """`run_sft.sh demo --config X` wrote a random tiny model over X's model_name_or_path (a real model folder), and
    into a junk ./meta-llama/... folder for a hub id."""
    from prep.errors import PrepError
    from prep.tiny_model import build_tiny_model

    repo = _repo_copy(tmp_path)
    real = tmp_path / "my model"
    real.mkdir()
    (real / "config.json").write_text("{}", encoding="utf-8")
    (real / "model.safetensors").write_bytes(b"weights")
    for model, message in ((str(real), "is not a tiny model built by prep"), ("meta-llama/Meta-Llama-3-8B-Instruct", "looks like a hub id")):
        config = _demo_config(tmp_path / "my.yaml", model_name_or_path=model, output_dir=str(tmp_path / "run" / "lora"), max_steps=1)
        result = _sft(repo, "demo", "--config", str(config), "--no-merge")
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert (real / "model.safetensors").read_bytes() == b"weights" and sorted(p.name for p in real.iterdir()) == ["config.json", "model.safetensors"]
    assert not (repo / "meta-llama").exists() and not (tmp_path / "run").exists()
    with pytest.raises(PrepError, match="holds no tiny model built by prep tiny-model"):
        build_tiny_model(real, [ROOT / "data" / "seed"])
    assert (real / "model.safetensors").read_bytes() == b"weights"


def test_a_demo_with_your_config_does_not_overwrite_a_finished_run(tmp_path):
    """The demo forced every run whose --output was not given, so a --config whose output_dir held a finished run was
    overwritten (and --dry-run said all checks passed); only the demo's own runs/demo is redone."""
    repo = _repo_copy(tmp_path)
    run = tmp_path / "finished"
    (run / "lora").mkdir(parents=True)
    (run / "lora" / "adapter_model.safetensors").write_bytes(b"adapter")
    (run / "run_manifest.json").write_text(json.dumps({"status": "finished", "exit_code": 0}), encoding="utf-8")
    config = _demo_config(tmp_path / "my.yaml", output_dir=str(run / "lora"))
    result = _sft(repo, "demo", "--config", str(config), "--dry-run")
    assert result.returncode == 2 and f"{run} holds a finished run; pass --force" in result.stderr, result.stdout[-800:] + result.stderr[-800:]
    own = _sft(repo, "demo", "--config", str(_demo_config(tmp_path / "own.yaml")), "--dry-run")
    assert own.returncode == 0 and "would train into runs/demo/lora" in own.stdout, own.stderr[-800:]


def _checkable(tmp_path: Path, tiny_model: Path, **changes) -> dict:
    """The demo config on the tiny model and a one-file dataset registry of its own."""
    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "问", "output": "答"}] * 4, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.json"}}), encoding="utf-8")
    config = yaml.safe_load((ROOT / "factory_configs" / "demo_cpu_lora_sft.yaml").read_text(encoding="utf-8"))
    config.update(model_name_or_path=str(tiny_model), dataset="d", dataset_dir=str(tmp_path), val_size=0.0,
                  eval_strategy="no", load_best_model_at_end=False, output_dir=str(tmp_path / "run" / "lora"))
    return {**config, **changes}


def test_a_dataset_longer_than_max_samples_is_named_before_the_run(tiny_model, tmp_path):
    """LLaMA-Factory trains only a dataset's first max_samples rows (3,000 in the seed's recipe): a bigger distilled
    set, or reviewed answers after the seed's rows, silently did not train."""
    from prep.runs import check_run

    run = tmp_path / "run"
    assert check_run(_checkable(tmp_path, tiny_model, max_samples=3), run, resume=False, force=False) == [
        f"max_samples 3: LLaMA-Factory trains only the first 3 of the 4 rows of {tmp_path / 'd.json'}; raise max_samples "
        "(or leave it out) to train them all."]
    assert check_run(_checkable(tmp_path, tiny_model, max_samples=4), run, resume=False, force=False) == []
    assert check_run(_checkable(tmp_path, tiny_model, max_samples=None), run, resume=False, force=False) == []


def test_an_interrupted_or_failed_run_is_redone_or_continued_only_when_asked(tiny_model, tmp_path):
    """A re-run without flags into a run that ended 'failed (merge)' or 'interrupted (train)' was accepted, and the
    script then deleted its adapter, checkpoints and merged model."""
    from prep.errors import PrepError
    from prep.runs import check_run

    config, run = _checkable(tmp_path, tiny_model), tmp_path / "run"
    (run / "lora" / "checkpoint-100").mkdir(parents=True)
    (run / "run_manifest.json").write_text(json.dumps({"status": "failed (merge)"}), encoding="utf-8")
    with pytest.raises(PrepError, match=r"ended failed \(merge\); re-run with --resume to continue from its last checkpoint, or --force"):
        check_run(config, run, resume=False, force=False)
    (run / "lora" / "checkpoint-100").rmdir()
    (run / "run_manifest.json").write_text(json.dumps({"status": "interrupted (train)"}), encoding="utf-8")
    with pytest.raises(PrepError, match=r"ended interrupted \(train\); re-run with --force to start over \(it saved no checkpoint"):
        check_run(config, run, resume=False, force=False)
    check_run(config, run, resume=False, force=True)


def test_a_failed_training_suggests_resume_only_when_there_is_a_checkpoint(tiny_model, tmp_path):
    """Training that failed before its first checkpoint said 're-run with --resume', which then failed too."""
    import shutil

    repo = _repo_copy(tmp_path)
    broken = tmp_path / "broken model"
    shutil.copytree(tiny_model, broken)
    # weights that do not fit the config: passes the run check (both files whole), fails when training loads them
    model_config = json.loads((broken / "config.json").read_text(encoding="utf-8"))
    (broken / "config.json").write_text(json.dumps({**model_config, "intermediate_size": 2 * model_config["intermediate_size"]}),
                                        encoding="utf-8")
    config = _demo_config(tmp_path / "my.yaml", model_name_or_path=str(broken))
    result = _sft(repo, "--config", str(config), "--output", str(tmp_path / "run"), "--no-merge")
    assert result.returncode == 10, result.stdout[-1500:] + result.stderr[-1500:]
    assert "re-run with --force to start over" in result.stderr and "re-run with --resume" not in result.stderr, result.stderr[-800:]


@pytest.mark.parametrize(("changes", "message"), [
    ({"finetuning_type": "lroa"}, "the config's finetuning_type: 'lroa' is not one of lora, oft, freeze, full."),
    ({"template": "llama33"}, "template 'llama33' is not one LLaMA-Factory knows; did you mean llama3"),
    # values of the wrong kind pass LLaMA-Factory's parser and fail at train start with a traceback
    ({"max_steps": "two"}, "the config's max_steps: 'two' is not a whole number."),
    ({"stage": "sfr"}, "the config's stage: 'sfr' is not one of pt, sft, rm, ppo, dpo, kto."),
    ({"learning_rate": "3e-3x"}, "the config's learning_rate: '3e-3x' is not a number."),
    # values LLaMA-Factory's parser passes: a negative rate trains away from the data, the others fail after loading
    ({"learning_rate": -1}, "the config's learning_rate: -1 is not above 0."),
    ({"learning_rate": "-1e-4"}, "the config's learning_rate: '-1e-4' is not above 0."),  # as PyYAML reads -1e-4
    ({"per_device_train_batch_size": 0}, "the config's per_device_train_batch_size: 0 is not 1 or more."),
    ({"cutoff_len": -5}, "the config's cutoff_len: -5 is not 1 or more."),
])
def test_a_bad_method_or_template_is_one_sentence_before_the_run(tiny_model, tmp_path, changes, message):
    """finetuning_type: lroa was a traceback (an AssertionError) in the check; template: llama33 passed it and failed
    at train start."""
    from prep.errors import PrepError
    from prep.runs import check_run

    with pytest.raises(PrepError, match=re.escape(message)):
        check_run(_checkable(tmp_path, tiny_model, **changes), tmp_path / "run", resume=False, force=False)


def test_a_model_folder_without_weights_is_one_sentence_before_the_run(tiny_model, tmp_path):
    """A model folder with config.json and the tokenizer but no weights (a download or export that did not finish)
    passed the check and failed at train start with a traceback."""
    import shutil

    from prep.errors import PrepError
    from prep.runs import check_run

    partial = tmp_path / "partial model"
    shutil.copytree(tiny_model, partial, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(PrepError, match="has no weights"):
        check_run(_checkable(tmp_path, partial), tmp_path / "run", resume=False, force=False)



def test_a_model_folder_cut_short_or_with_a_broken_config_is_one_sentence_before_the_run(tiny_model, tmp_path):
    """A safetensors file cut short (an interrupted download or copy), an empty one, a config.json that is not JSON
    and an index naming a missing shard passed the check and failed at train start with a traceback."""
    import shutil

    from prep.errors import PrepError
    from prep.runs import check_run

    check_run(_checkable(tmp_path, tiny_model), tmp_path / "run", resume=False, force=False)  # the whole one passes
    [weights] = tiny_model.glob("*.safetensors")
    cases = [(weights.name, weights.read_bytes()[:-100], "is cut short"), (weights.name, b"", "is not a safetensors file"),
             ("config.json", b'{"model_type": "llama",', "config.json cannot be read as JSON"),
             ("model.safetensors.index.json", b'{"weight_map": {"w": "model-00002-of-00002.safetensors"}}',
              "names 1 missing shard (model-00002-of-00002.safetensors)"),
             (weights.name, (35).to_bytes(8, "little") + b'{"w": {"data_offsets": ["0", "4"]}}', "has an unreadable header"),
             ("model.safetensors.index.json", b'{"weight_map": {"w": ["a"]}}', "cannot be read as a shard index")]
    for n, (name, content, message) in enumerate(cases):
        broken = tmp_path / f"broken{n}"
        shutil.copytree(tiny_model, broken)
        (broken / name).write_bytes(content)
        with pytest.raises(PrepError, match=re.escape(message)):
            check_run(_checkable(tmp_path, broken), tmp_path / "run", resume=False, force=False)
    # a weights file linked to a blob that is not there (a hub cache folder copied without its blobs)
    linked = tmp_path / "linked"
    shutil.copytree(tiny_model, linked)
    (linked / weights.name).unlink()
    (linked / weights.name).symlink_to(tmp_path / "no-such-blob")
    with pytest.raises(PrepError, match=re.escape(f"{weights.name} cannot be read (No such file or directory)")):
        check_run(_checkable(tmp_path, linked), tmp_path / "run", resume=False, force=False)


def test_recording_the_end_of_a_run_needs_its_manifest_and_keeps_an_unreadable_one(tmp_path):
    """prep run-finish on a mistyped folder made it a new 'finished' run (which run_sft.sh then refused to reuse); on
    an unreadable manifest it replaced the config, commit and dataset hashes it held without a word."""
    from prep.errors import PrepError
    from prep.runs import finish_manifest

    with pytest.raises(PrepError, match="no run_manifest.json"):
        finish_manifest(tmp_path / "typo", 0, "train")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "run_manifest.json").write_text('{"config": {"lr": 1', encoding="utf-8")
    finish_manifest(tmp_path, 130, "train")
    assert (tmp_path / "run_manifest.unreadable.json").read_text(encoding="utf-8") == '{"config": {"lr": 1'
    assert json.loads((tmp_path / "run_manifest.json").read_text(encoding="utf-8"))["status"] == "interrupted (train)"


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    """A broken config said only 'not valid YAML (ScannerError)': no line to look at."""
    from prep.errors import PrepError
    from prep.fsutil import read_yaml_mapping

    (tmp_path / "bad.yaml").write_text("model_name_or_path: x\nstage: sft\n  bad: [1,\n", encoding="utf-8")
    with pytest.raises(PrepError, match=r"not valid YAML at line 3, column 6 \(ScannerError: mapping values are not allowed here\)"):
        read_yaml_mapping(tmp_path / "bad.yaml", "--config")


def test_values_llamafactory_takes_are_not_refused_by_the_kind_check():
    """The kind check must not refuse what works: 16.0 for a whole number, 1/0 for true/false, 3e-3 as PyYAML reads it
    (a string), and every bundled config: also after LLaMA-Factory's parser has run once in the process (it rewrites the
    dataclass fields' types in place, str | bool to bool, and include_num_input_tokens_seen: non_padding was refused)."""
    from llamafactory.hparams import get_train_args

    from prep.runs import _check_ranges, _check_value_types

    get_train_args(yaml.safe_load((ROOT / "factory_configs" / "demo_cpu_lora_sft.yaml").read_text(encoding="utf-8")))
    for path in sorted((ROOT / "factory_configs").glob("*.yaml")):
        _check_value_types(yaml.safe_load(path.read_text(encoding="utf-8")))
        _check_ranges(yaml.safe_load(path.read_text(encoding="utf-8")))
    _check_value_types({"lora_alpha": 16.0, "fp16": 0, "bf16": 1, "learning_rate": "3e-3", "lr_scheduler_type": "cosine_with_restarts",
                        "report_to": "none", "lora_target": "all", "max_samples": None})


def test_run_sft_help_is_the_usage_and_nothing_else():
    """--help printed the script's first 16 lines, the last of them code (set -euo pipefail)."""
    result = subprocess.run(["bash", str(ROOT / "run_sft.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "bash run_sft.sh demo" in result.stdout and "11 merge failed" in result.stdout
    assert "set -euo" not in result.stdout and not result.stdout.startswith("!")


def test_a_folder_dataset_counts_its_files_together_against_max_samples(tmp_path):
    """LLaMA-Factory loads a folder dataset as one dataset and then keeps its first max_samples rows: two files of 3
    rows under max_samples 4 lose 2 rows, which a count per file did not see."""
    from prep.runs import dataset_files, max_samples_warnings

    folder = tmp_path / "data" / "psy_feedback"
    folder.mkdir(parents=True)
    for part in ("a.jsonl", "b.json"):
        rows = [{"instruction": f"问{part}{n}", "output": "答"} for n in range(3)]
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows) if part.endswith("l") else json.dumps(rows)
        (folder / part).write_text(text, encoding="utf-8")
    (tmp_path / "data" / "one.json").write_text(json.dumps([{"instruction": "问", "output": "答"}] * 3), encoding="utf-8")
    (tmp_path / "dataset_info.json").write_text(json.dumps({"fb": {"file_name": "data/psy_feedback"},
                                                            "one": {"file_name": "data/one.json"}}), encoding="utf-8")
    config = {"dataset_dir": str(tmp_path), "dataset": "fb,one", "max_samples": 4}
    assert max_samples_warnings(config, dataset_files(config)) == [
        f"max_samples 4: LLaMA-Factory trains only the first 4 of the 6 rows of dataset fb (2 files under {folder}); "
        "raise max_samples (or leave it out) to train them all."]
    assert max_samples_warnings({**config, "max_samples": 6}, dataset_files(config)) == []
