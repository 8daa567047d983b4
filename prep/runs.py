"""Training runs: checks before a run, the run manifest, and the loss report after it.

``run_sft.sh`` calls these through ``prep run-check``, ``prep run-manifest`` and
``prep report-run``. A run folder holds ``run_config.yaml`` (the resolved
config the run used), ``run_manifest.json``, ``lora/`` (adapter, checkpoints,
trainer logs, loss PNGs), ``merged/`` and ``report.md``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import types
import typing
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from prep.errors import PrepError
from prep.fsutil import (atomic_write_json, atomic_write_text, file_sha256, has_model_weights, model_files_problem,
                         nearest_existing, read_yaml_mapping)
from prep.readers.decode import json_array, json_lines, read_input
from prep.writers import registry_entries

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("llamafactory", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "psy-counsel-prep")


def load_config(path: Path) -> dict:
    return read_yaml_mapping(path, "--config")


def resolve(config_path: Path, run_dir: Path | None, model: str | None, dataset: str | None, resume: bool) -> tuple[dict, Path]:
    """The training config with the command-line choices applied, and the run folder."""
    config = load_config(config_path)
    run_dir = Path(run_dir) if run_dir else Path(config.get("output_dir", "runs/run/lora")).parent
    config["output_dir"] = str(run_dir / "lora")
    if model:
        config["model_name_or_path"] = model
    if dataset:
        config["dataset"] = dataset
    config["overwrite_output_dir"] = not resume
    return config, run_dir


def _looks_local(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).exists() or model.count("/") != 1


def _wants_gpu(config: dict) -> bool:
    return bool(config.get("bf16") or config.get("fp16") or config.get("quantization_bit") or config.get("deepspeed"))


REMOTE_DATASET_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


def check_datasets(config: dict, built_first: str | None = None) -> list[Path]:
    """Every dataset named in the config is registered and its file is present and non-empty; the files, in order."""
    return [file for files in dataset_files(config, built_first).values() for file in files]


def dataset_files(config: dict, built_first: str | None = None) -> dict[str, list[Path]]:
    """Per dataset named in the config, its local files (a folder dataset's data files, none for one on a hub), each
    checked to be registered, present and non-empty. With ``built_first`` (a dry run before ``prep build ... --name
    NAME`` has run) the datasets that build registers in this folder's registry are left out: NAME_alpaca,
    NAME_sharegpt and NAME_test, when the config reads the registry here."""
    names = [name.strip() for name in str(config.get("dataset", "")).split(",") if name.strip()]
    if not names:
        raise PrepError("the config names no dataset; set 'dataset' or pass --dataset NAMES.")
    dataset_dir = Path(config.get("dataset_dir", "data"))
    if built_first and dataset_dir.resolve() == Path.cwd().resolve():
        names = [name for name in names if name not in registry_entries(built_first)]
        if not names:
            return {}
    registry_path = dataset_dir / "dataset_info.json"
    if not registry_path.is_file():
        raise PrepError(f"{registry_path}: no dataset registry; run 'prep build ... --name NAME' first.")
    try:
        registry = json.loads(read_input(registry_path, "dataset registry"))
    except json.JSONDecodeError as err:
        raise PrepError(f"{registry_path}: not valid JSON ({err.msg} at line {err.lineno}).") from None
    if not isinstance(registry, dict):
        raise PrepError(f"{registry_path}: expected a JSON object of dataset entries.")
    return {name: _local_files(name, registry.get(name), registry_path) for name in names}


def _local_files(name: str, entry: object, registry_path: Path) -> list[Path]:
    if entry is None:
        raise PrepError(f"dataset '{name}' is not in {registry_path}; run 'prep build ... --name {name.rsplit('_', 1)[0]}' or fix 'dataset'.")
    if not isinstance(entry, dict):
        raise PrepError(f"dataset '{name}' in {registry_path} is {type(entry).__name__}, not an entry; expected an object with file_name.")
    if any(entry.get(key) for key in REMOTE_DATASET_KEYS):
        return []  # on a hub or in the cloud: LLaMA-Factory fetches it, nothing local to check
    if not entry.get("file_name"):
        raise PrepError(f"dataset '{name}' in {registry_path} has no file_name (nor {', '.join(REMOTE_DATASET_KEYS)}).")
    file = registry_path.parent / entry["file_name"]
    parts = sorted(p for p in file.rglob("*") if p.is_file() and _holds_data(p)) if file.is_dir() else []
    if not parts and (not file.is_file() or not _holds_data(file)):
        raise PrepError(f"dataset '{name}': {file} is missing or empty; run 'prep build' to write it.")
    return parts or [file]


def check_run(config: dict, run_dir: Path, resume: bool, force: bool, data_built_first: str | None = None,
              model_built_first: bool = False) -> list[str]:
    """Everything that would otherwise fail after the model has loaded, as one sentence each. A dry run leaves out
    what the real run builds before it trains: datasets named ``data_built_first*`` and the (demo's) model.
    Returns warnings: what the run will do that the user may not expect."""
    if _wants_gpu(config):
        import torch

        if not torch.cuda.is_available():
            raise PrepError("this config needs a CUDA GPU (bf16/fp16/quantization/deepspeed) and none was found; use 'bash run_sft.sh demo' on CPU.")
    model = str(config.get("model_name_or_path", ""))
    if not model:
        raise PrepError("the config has no model_name_or_path; pass --model PATH_OR_ID.")
    if model_built_first:
        pass
    elif _looks_local(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise PrepError(f"model folder '{model}' not found or has no config.json; pass --model with a local folder or a hub id.")
        if not has_model_weights(folder) and not any(folder.glob("*.safetensors.index.json")):
            raise PrepError(f"model folder '{model}' has no weights (*.safetensors or *.bin); expected a complete model "
                            "(a download or export that did not finish?).")
        problem = model_files_problem(folder)
        if problem:
            raise PrepError(f"model folder '{model}': {problem}; expected a complete model.")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(model):
        raise PrepError(f"model '{model}' is a hub id but HF_HUB_OFFLINE=1; download it first or pass --model with a local folder.")
    files = dataset_files(config, data_built_first)
    _check_run_folder(run_dir)
    manifest = _read_manifest(run_dir)
    if resume:
        if not has_checkpoint(run_dir):
            raise PrepError(f"--resume: no checkpoint-* in {run_dir / 'lora'} to continue from.")
    elif not force and (manifest.get("status") == "finished" or (not manifest and _has_adapter(run_dir / "lora"))):
        raise PrepError(f"{run_dir} holds a finished run; pass --force to overwrite it, --resume to continue, or --output DIR.")
    elif not force and manifest.get("status") == "running":
        raise PrepError(f"{run_dir} holds a run that is still running, or was killed without a word (started "
                        f"{manifest.get('start')}); pass --force if it is not running any more, --resume to continue, or --output DIR.")
    elif not force and str(manifest.get("status", "")).startswith(("interrupted", "failed")):
        raise PrepError(f"{run_dir} holds a run that ended {manifest['status']}; {rerun_hint(run_dir)}, or pass --output DIR.")
    check_template(config)
    _parse_with_llamafactory(config)
    return max_samples_warnings(config, files)


def max_samples_warnings(config: dict, files: dict[str, list[Path]]) -> list[str]:
    """A dataset with more rows than ``max_samples``: LLaMA-Factory trains only each dataset's first rows (the seed's
    recipe sets 3,000; a distilled set of 4,000, or reviewed answers after them, would silently not train). A folder
    dataset is one dataset: its files' rows count together."""
    cap = config.get("max_samples")
    if not isinstance(cap, int) or isinstance(cap, bool):
        return []
    warnings = []
    for name, parts in files.items():
        counts = [_count_rows(file) for file in parts]
        rows = sum(count or 0 for count in counts)
        if rows > cap:
            where = parts[0] if len(parts) == 1 else f"dataset {name} ({len(parts)} files under {parts[0].parent})"
            warnings.append(f"max_samples {cap}: LLaMA-Factory trains only the first {cap} of the {rows} rows of {where}; "
                            "raise max_samples (or leave it out) to train them all.")
    return warnings


def _count_rows(file: Path) -> int | None:
    """Rows in a JSON list or JSON Lines dataset file (a JSON list saved as .jsonl, which LLaMA-Factory's loader reads,
    counted as the list); None for other formats or a file that does not parse."""
    if file.suffix not in (".json", ".jsonl"):
        return None
    try:
        text = read_input(file, "dataset")
        if file.suffix == ".jsonl":
            array = json_array(text)
            return len(array) if array is not None else sum(1 for line in text.splitlines() if line.strip())
        data = json.loads(text)
    except (json.JSONDecodeError, PrepError):
        return None
    return len(data) if isinstance(data, list) else None


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run saved a checkpoint (a lora/checkpoint-* folder) that --resume can continue from."""
    return any(path.is_dir() for path in (Path(run_dir) / "lora").glob("checkpoint-*"))


def rerun_hint(run_dir: Path) -> str:
    """How to go on after a run that stopped: --resume only when there is a checkpoint to continue from. run_sft.sh
    prints it too (``prep run-finish`` of a failed or interrupted run)."""
    if has_checkpoint(run_dir):
        return "re-run with --resume to continue from its last checkpoint, or --force to start over"
    return "re-run with --force to start over (it saved no checkpoint to --resume from)"


def check_template(config: dict) -> None:
    """The chat template is one LLaMA-Factory knows (an unknown one passes its parser and fails at train start)."""
    import difflib

    from llamafactory.data.template import TEMPLATES

    template = config.get("template")
    if template is None or template in TEMPLATES:
        return
    close = difflib.get_close_matches(str(template), list(TEMPLATES), n=4, cutoff=0.5)
    raise PrepError(f"template '{template}' is not one LLaMA-Factory knows; did you mean {', '.join(close) or 'llama3'}?")


def is_demo_run_folder(config_path: Path, output: str | None) -> bool:
    """Whether a demo run goes into the demo's own runs/demo folder (under the current folder), which every demo redoes."""
    if output:
        return False
    _, run_dir = resolve(config_path, None, None, None, False)
    return run_dir.resolve() == Path("runs/demo").resolve()


def _holds_data(file: Path) -> bool:
    """Whether a dataset file holds anything: not empty, nor an empty JSON list or object (``[]\n``, which LLaMA-Factory
    refuses at train start)."""
    size = file.stat().st_size
    if size > 64:
        return True
    return file.read_bytes().strip() not in (b"", b"[]", b"{}")


def _check_run_folder(run_dir: Path) -> None:
    """The run folder is a folder, or can be made in the nearest folder above it that exists."""
    existing = nearest_existing(run_dir)
    if not existing.is_dir():
        raise PrepError(f"run folder {run_dir}: {existing} is a file, not a folder; pass --output with another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PrepError(f"run folder {run_dir}: cannot write in {existing}; pass --output with a folder you can write.")


def _has_adapter(lora: Path) -> bool:
    """A trained adapter (a run's final save), with or without a manifest (llamafactory-cli train run by hand)."""
    return (lora / "adapter_config.json").is_file() or (lora / "adapter_model.safetensors").is_file()


def _in_hub_cache(model: str) -> bool:
    """Whether a hub id is already downloaded, so that an offline run can load it."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # an invalid repo id, or no hub library
        return False


def _parse_with_llamafactory(config: dict) -> None:
    """LLaMA-Factory's own argument checks. Seeing several GPUs, its parser refuses a process that torchrun did not
    launch (as llamafactory-cli train will), so the check then runs in a child process that sees one GPU, as each
    training process does."""
    if _visible_gpus() > 1 and os.environ.get("PREP_CHECK_CHILD") != "1":
        _parse_in_child(config)
        return
    from llamafactory.hparams import get_train_args

    checked = dict(config)
    if _wants_gpu(checked):
        checked.pop("deepspeed", None)  # DeepSpeed itself is checked at launch, not by the parser
    _check_value_types(checked)
    _check_ranges(checked)
    try:
        get_train_args(checked)
    except (ValueError, TypeError, KeyError, AssertionError) as err:  # (it asserts some choices, e.g. finetuning_type)
        raise PrepError(f"LLaMA-Factory rejects the config: {(str(err).splitlines() or [type(err).__name__])[0]}") from None
    except SystemExit:
        raise PrepError("LLaMA-Factory rejects the config (unknown or malformed keys).") from None


def _argument_types() -> dict[str, object]:
    """The declared type of every argument LLaMA-Factory's train parser takes, by name: from the classes' annotations,
    not their fields (HfArgumentParser rewrites a field's type in place once it has seen it: str | bool becomes bool)."""
    from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments
    from llamafactory.hparams.training_args import TrainingArguments

    declared: dict[str, object] = {}
    for cls in (ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments, TrainingArguments):
        try:
            declared.update(typing.get_type_hints(cls))
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: leave that class to LLaMA-Factory
            continue
    return declared


def _check_value_types(config: dict) -> None:
    """Values of the wrong kind (max_steps: two, stage: sfr, learning_rate: 3e-3x), which LLaMA-Factory's parser
    passes and training then fails on with a traceback, as one sentence naming the key. Only numbers, true/false and
    fixed choices are checked; a key that also takes text is left to LLaMA-Factory."""
    declared_types = _argument_types()
    for key, value in config.items():
        kinds = _kinds(declared_types.get(key))
        literal = len(kinds) == 1 and typing.get_origin(kinds[0]) is typing.Literal
        if value is None or not kinds or not (literal or set(kinds) <= {int, float, bool}):
            continue
        problem = _value_problem(value, kinds)
        if problem:
            raise PrepError(f"the config's {key}: {value!r} is not {problem}.")


# Values LLaMA-Factory's parser passes although no run can use them: a negative learning rate trains away from the
# data without an error; a batch size, cutoff_len or LoRA rank of 0 fails after the model has loaded.
_AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "cutoff_len", "lora_rank")


def _check_ranges(config: dict) -> None:
    def number(key: str) -> float | None:  # PyYAML reads -1e-4 (no dot) as text; LLaMA-Factory takes it as a number
        try:
            return float(config[key]) if not isinstance(config.get(key), bool) and config.get(key) is not None else None
        except (TypeError, ValueError):
            return None

    for key in _AT_LEAST_ONE:
        if number(key) is not None and number(key) < 1:
            raise PrepError(f"the config's {key}: {config[key]!r} is not 1 or more.")
    if number("learning_rate") is not None and not number("learning_rate") > 0:
        raise PrepError(f"the config's learning_rate: {config['learning_rate']!r} is not above 0.")
    for key in ("val_size", "warmup_ratio"):
        if number(key) is not None and not number(key) >= 0:
            raise PrepError(f"the config's {key}: {config[key]!r} is not 0 or more.")


def _kinds(declared: object) -> list:
    """The types a declared type allows, None left out (int | None -> [int]); [] for an unknown key."""
    if declared is None:
        return []
    union = typing.get_origin(declared) in (typing.Union, types.UnionType)
    return [kind for kind in (typing.get_args(declared) if union else [declared]) if kind is not type(None)]


def _value_problem(value: object, kinds: list) -> str | None:
    if typing.get_origin(kinds[0]) is typing.Literal:
        choices = typing.get_args(kinds[0])
        return None if value in choices else f"one of {', '.join(map(str, choices))}"
    if bool in kinds:  # (1 and 0 work as true and false)
        return None if value in (True, False) or str(value).lower() in ("true", "false") else "true or false"
    whole = float not in kinds
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (whole and not number.is_integer()):  # 16.0 is a whole number
        return "a whole number" if whole else "a number"
    return None


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # no CUDA runtime
        return 0


def _parse_in_child(config: dict) -> None:
    import subprocess
    import sys

    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": first, "PREP_CHECK_CHILD": "1"}
    code = ("import json, sys\nfrom prep.errors import PrepError\nfrom prep.runs import _parse_with_llamafactory\n"
            "try:\n    _parse_with_llamafactory(json.load(sys.stdin))\nexcept PrepError as err:\n    print(err, file=sys.stderr); sys.exit(2)\n")
    child = subprocess.run([sys.executable, "-c", code], input=json.dumps(config), env=env, capture_output=True, text=True)
    if child.returncode:
        lines = child.stderr.strip().splitlines()
        raise PrepError(lines[-1] if lines and child.returncode == 2 else "LLaMA-Factory's config check failed (exit "
                        f"{child.returncode}): {(lines or ['no output'])[-1]}")


def _read_manifest(run_dir: Path) -> dict:
    """A run's manifest, or {} when there is none or it is unreadable (a hand edit, a crash while writing)."""
    return _json_object(run_dir / "run_manifest.json")


def _git() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _gpus() -> list[str]:
    try:
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no CUDA runtime at all
        return []


def start_manifest(config: dict, run_dir: Path, command: str) -> Path:
    """Write the resolved config and a manifest with status 'running'."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepError(f"run folder {run_dir}: cannot be made ({err.strerror}); pass --output with another folder.") from None
    config_path = run_dir / "run_config.yaml"
    atomic_write_text(config_path, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    manifest = {
        "status": "running",
        "command": command,
        "config": config,
        "git": _git(),
        "datasets": {str(p): file_sha256(p) for p in check_datasets(config)},
        "packages": versions,
        "python": platform.python_version(),
        "gpus": _gpus(),
        "start": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(run_dir / "run_manifest.json", manifest)
    return config_path


def finish_manifest(run_dir: Path, exit_code: int, stage: str) -> None:
    """Record how a run ended in its manifest: only a run folder that holds one (a typo made a new 'finished' run)."""
    path = Path(run_dir) / "run_manifest.json"
    if not path.is_file():
        raise PrepError(f"{run_dir}: no run_manifest.json; expected the folder of a run started by run_sft.sh.")
    manifest = _read_manifest(run_dir)
    if not manifest:  # unreadable: keep it for a look rather than replace the config, commit and hashes it held
        path.replace(path.with_name("run_manifest.unreadable.json"))
    manifest.update(
        status="finished" if exit_code == 0 else f"interrupted ({stage})" if exit_code == 130 else f"failed ({stage})",
        exit_code=exit_code,
        end=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_json(run_dir / "run_manifest.json", manifest)


def report_run(run_dir: Path) -> str:
    """A Markdown summary of a run: losses, best checkpoint, speed, wall time, plots."""
    run_dir = Path(run_dir)
    lora = run_dir / "lora" if (run_dir / "lora").is_dir() else run_dir
    log_path = lora / "trainer_log.jsonl"
    if not log_path.is_file():
        raise PrepError(f"{log_path}: no trainer log; is {run_dir} a run folder (llamafactory-cli train output)?")
    # A run killed mid-write leaves a cut last line: the report is of what was logged, not an error.
    entries = [e for _, e in json_lines(log_path, "trainer log") if isinstance(e, dict)]
    train = [e for e in entries if _finite(e.get("loss"))]
    evals = [e for e in entries if _finite(e.get("eval_loss"))]
    last = next((e for e in reversed(entries) if e.get("current_steps") is not None), {})
    diverged = next((e for e in entries if any(key in e and not _finite(e[key]) for key in ("loss", "eval_loss"))), None)
    state = {}
    for candidate in [lora / "trainer_state.json", *sorted(lora.glob("checkpoint-*/trainer_state.json"))]:
        state = _json_object(candidate) or state
    results = _json_object(lora / "all_results.json")
    best = min(evals, key=lambda e: e["eval_loss"]) if evals else None
    manifest = _read_manifest(run_dir)
    lines = [f"# Run report: {run_dir}", ""]
    if manifest:
        lines += [f"status **{manifest.get('status')}**, git {str((manifest.get('git') or {}).get('commit'))[:10]}"
                  f"{' (dirty)' if (manifest.get('git') or {}).get('dirty') else ''}, started {manifest.get('start')}, ended {manifest.get('end')}", ""]
    lines += ["| metric | value |", "|---|---|",
              f"| steps | {last.get('current_steps', 0)} / {last.get('total_steps', 0)} |",
              f"| first / last train loss | {train[0]['loss'] if train else '-'} / {train[-1]['loss'] if train else '-'} |",
              f"| best eval loss | {best['eval_loss'] if best else '-'} at step {best.get('current_steps') if best else '-'} |",
              *([f"| **loss not finite (NaN/inf) from step** | {diverged.get('current_steps')} |"] if diverged else []),
              f"| best checkpoint | {state.get('best_model_checkpoint') or state.get('best_global_step') or '-'} |",
              f"| train runtime (s) | {results.get('train_runtime', '-')} |",
              f"| train samples/s | {results.get('train_samples_per_second', '-')} |",
              f"| tokens/s | {_tokens_per_second(entries, results)} |"]
    for png in ("training_loss.png", "training_eval_loss.png"):
        if (lora / png).is_file():
            lines += ["", f"![{png}]({(lora / png).relative_to(run_dir)})"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(run_dir / "report.md", text)
    return text


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_object(path: Path) -> dict:
    """A JSON object file of the trainer, or {} when it is missing or unreadable (a run stopped while writing it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _tokens_per_second(entries: list[dict], results: dict) -> str:
    tokens = results.get("num_input_tokens_seen") or next((e.get("num_input_tokens_seen") for e in reversed(entries) if e.get("num_input_tokens_seen")), None)
    runtime = results.get("train_runtime")
    if _finite(tokens) and _finite(runtime) and tokens > 0 and runtime > 0:
        return f"{tokens / runtime:.1f}"
    return "- (set include_num_input_tokens_seen: true)"
