"""LoRA SFT throughput: the seed config versus the throughput-tuned config, side by side.

Each config trains in its own process through LLaMA-Factory's own ``run_exp`` (what
``llamafactory-cli train`` runs) on the same data for the same number of optimizer
steps, with one extra callback that times the steps after a warm-up (kernel
compilation, CUDA start-up and the first allocations are not throughput).

Tokens/s counts real tokens only: the seed config runs batch 1 and counts
``non_padding``; packed rows end in padding, so for packed configs the count of all
input tokens is scaled by the share of real tokens in the packed rows ("non_padding"
miscounts neat-packed masks in transformers 5.6).

With CUDA the model is Llama-3-8B-shaped (32 layers, hidden 4096, vocab 128,256) with
random weights, built on the GPU in bf16 (throughput does not depend on the weights),
and the QLoRA config is also run with every row packed to the full cutoff (2048
tokens), which is its worst-case memory. Peak GPU memory is both torch's peak reserved
memory and the card's peak as nvidia-smi sees it (CUDA context included).
Without CUDA it uses the tiny local model and CPU-safe versions of the configs (no
bf16/TF32/Liger/FlashAttention/4-bit): those figures are NOT GPU figures, they only
show the effect of packing.

    python bench/bench_train.py [--steps 30] [--warmup-steps 5] [--ablate] [--json OUT.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = ("bf16", "tf32", "enable_liger_kernel", "flash_attn", "deepspeed", "quantization_bit",
            "quantization_method", "double_quantization")
# name -> (config file, overrides): the comparison, then the QLoRA worst case, then ablations.
VARIANTS = {
    "plain": ("llama3_lora_sft.yaml", {}),
    "tuned": ("llama3_lora_sft_fast.yaml", {}),
    "qlora_full_rows": ("llama3_qlora_sft.yaml", {"packing": True}),
    "tuned_no_liger": ("llama3_lora_sft_fast.yaml", {"enable_liger_kernel": False}),
    "tuned_no_neat": ("llama3_lora_sft_fast.yaml", {"neat_packing": False}),
}


def child_main(config_path: Path, result_path: Path, warmup_steps: int) -> None:
    """Train one config in this process and write its timing and memory to ``result_path``."""
    import numpy as np
    import torch
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.first = self.last = None
            self.real_share = 1.0

        def on_train_begin(self, args, state, control, train_dataloader=None, processing_class=None, **kwargs):
            # Packed rows end in pad tokens (attention mask 0 with neat packing, 1 without): count what precedes them.
            dataset = getattr(train_dataloader, "dataset", None)
            pad_id = getattr(processing_class, "pad_token_id", None)
            if dataset is not None and pad_id is not None and "input_ids" in (getattr(dataset, "column_names", None) or []):
                real = total = 0
                for ids in dataset["input_ids"]:
                    not_pad = np.flatnonzero(np.asarray(ids) != pad_id)
                    real += int(not_pad[-1]) + 1 if not_pad.size else 0
                    total += len(ids)
                self.real_share = real / total if total else 1.0

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            mark = (time.perf_counter(), state.num_input_tokens_seen, state.global_step)
            if state.global_step == warmup_steps:
                self.first = mark
            self.last = mark

    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    meter = Meter()
    started = time.perf_counter()
    run_exp(args=config, callbacks=[meter])
    wall = time.perf_counter() - started
    (t0, tokens0, step0), (t1, tokens1, step1) = meter.first, meter.last
    share = meter.real_share if config.get("packing") else 1.0  # unpacked rows count non_padding already
    tokens = (tokens1 - tokens0) * share
    result = {"steps_timed": step1 - step0, "seconds_timed": round(t1 - t0, 2), "real_tokens_timed": int(tokens),
              "tokens_per_s": round(tokens / (t1 - t0), 1), "s_per_step": round((t1 - t0) / (step1 - step0), 3),
              "real_token_share": round(share, 4), "process_wall_s": round(wall, 1)}
    if cuda:
        result["torch_peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        result["torch_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result_path.write_text(json.dumps(result), encoding="utf-8")


class GpuMemoryPoller:
    """The card's peak used memory (nvidia-smi, CUDA context included) while a run lasts."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self._proc = None
        self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                           "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.peak_mib = max(self.peak_mib, int(line.strip()))

    def __exit__(self, *exc) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait()
            self._thread.join(timeout=5)


def bench_variant(name: str, model: str, steps: int, warmup_steps: int, work: Path, cpu: bool) -> dict:
    """Write the variant's config (bench settings over the project's YAML) and train it in a child process."""
    config_name, overrides = VARIANTS[name]
    config = yaml.safe_load((ROOT / "factory_configs" / config_name).read_text(encoding="utf-8"))
    config.update(overrides)
    if cpu:
        for key in GPU_ONLY:
            config.pop(key, None)
        config.update(cutoff_len=512, preprocessing_num_workers=1, dataloader_num_workers=0)
    out = work / name
    config.update(model_name_or_path=model, output_dir=str(out), max_steps=steps, val_size=0.0, eval_strategy="no",
                  load_best_model_at_end=False, save_steps=100_000, logging_steps=5, plot_loss=False,
                  include_num_input_tokens_seen=True if config.get("packing") else "non_padding",
                  dataset_dir=str(ROOT), report_to="none")
    for key in ("eval_steps", "per_device_eval_batch_size", "metric_for_best_model"):
        config.pop(key, None)
    config_path, result_path = work / f"{name}.yaml", work / f"{name}.result.json"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"}
    with GpuMemoryPoller() as poller:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(config_path),
                               "--result", str(result_path), "--warmup-steps", str(warmup_steps)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return {"variant": name, "config": config_name, "error": done.stderr.strip().splitlines()[-30:]}
    row = {"variant": name, "config": config_name, "overrides": overrides, "steps": steps,
           **json.loads(result_path.read_text(encoding="utf-8"))}
    if poller.peak_mib:
        row["card_peak_used_gb"] = round(poller.peak_mib / 1024, 2)
    shutil.rmtree(out, ignore_errors=True)
    return row


def prepare_model(args, work: Path, cpu: bool) -> str:
    """The model to train: --model, else the tiny model (CPU) or an 8B-shaped random Llama (CUDA)."""
    if args.model:
        return args.model
    tokenizer_dir = args.tokenizer
    if tokenizer_dir is None or cpu:
        subprocess.run([sys.executable, "-m", "prep.cli", "tiny-model", str(work / "tiny"), "--hidden-size", "256",
                        "--layers", "4"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tokenizer_dir = work / "tiny"
        if cpu:
            return str(tokenizer_dir)
    import torch
    from transformers import AutoTokenizer

    from prep.tiny_model import LLAMA3_8B_SHAPE, llama_config, save_random_llama

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    started = time.perf_counter()
    config = llama_config(tokenizer, **LLAMA3_8B_SHAPE)
    save_random_llama(work / "llama3-8b-shaped", tokenizer, config, device="cuda", dtype=torch.bfloat16)
    torch.cuda.empty_cache()
    print(f"8B-shaped random model written in {time.perf_counter() - started:.0f} s", flush=True)
    return str(work / "llama3-8b-shaped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--qlora-steps", type=int, default=12, help="steps for the QLoRA memory run")
    parser.add_argument("--model", help="model folder to train instead of the generated one")
    parser.add_argument("--tokenizer", help="tokenizer folder for the 8B-shaped model (default: a tiny-model's)")
    parser.add_argument("--skip-build", action="store_true", help="use the registered psy_seed data as it is")
    parser.add_argument("--ablate", action="store_true", help="also run the tuned config without Liger / neat packing")
    parser.add_argument("--only", help="comma-separated variants to run: " + ", ".join(VARIANTS))
    parser.add_argument("--json", type=Path, help="append each variant's result to this JSONL file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.result, args.warmup_steps)
        return
    import torch

    cpu = not torch.cuda.is_available()
    names = ["plain", "tuned"]
    if not cpu:
        names.append("qlora_full_rows")
    if args.ablate:
        names += ["tuned_no_liger", "tuned_no_neat"]
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    if not args.skip_build:
        subprocess.run([sys.executable, "-m", "prep.cli", "build", "data/seed", "--name", "psy_seed"], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
    print(f"device: {'CPU (tiny model; NOT GPU figures)' if cpu else torch.cuda.get_device_name(0)}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        model = prepare_model(args, work, cpu)
        for name in names:
            steps = args.qlora_steps if name.startswith("qlora") else args.steps
            rows[name] = row = bench_variant(name, model, steps, min(args.warmup_steps, steps - 2), work, cpu)
            print(json.dumps(row), flush=True)
            if args.json:
                with args.json.open("a", encoding="utf-8") as sink:
                    sink.write(json.dumps(row) + "\n")
    plain, tuned = (rows.get(name, {}).get("tokens_per_s") for name in ("plain", "tuned"))
    if plain and tuned:
        print(f"tuned / plain tokens/s: {tuned / plain:.2f}")


if __name__ == "__main__":
    main()
