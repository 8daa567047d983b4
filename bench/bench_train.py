"""LoRA SFT throughput: the seed config versus the throughput-tuned config, side by side.

Both run through the real ``llamafactory-cli train`` on the same data for the
same number of optimizer steps; tokens/s = input tokens seen / train runtime,
peak memory from the child's max RSS (CPU) or torch's peak (GPU runs report
what LLaMA-Factory logs). On a machine without CUDA this uses the tiny local
model and CPU-safe versions of both configs (no bf16/tf32/Liger/FlashAttention):
its figures are NOT GPU figures, they only show the effect of packing.
Tokens are all input tokens seen: the plain config runs batch 1 (no padding at
all); packed rows carry a little padding at their tail, so the tuned figure is
an upper bound by that much ("non_padding" miscounts with neat_packing in
transformers 5.6).

    python bench/bench_train.py [--steps 30] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = ("bf16", "tf32", "enable_liger_kernel", "flash_attn", "deepspeed", "quantization_bit")


def run(config_name: str, model: str, steps: int, work: Path, cpu: bool) -> dict:
    config = yaml.safe_load((ROOT / "factory_configs" / config_name).read_text(encoding="utf-8"))
    if cpu:
        for key in GPU_ONLY:
            config.pop(key, None)
        config.update(cutoff_len=512, preprocessing_num_workers=1, dataloader_num_workers=0)
    out = work / config_name.replace(".yaml", "")
    config.update(model_name_or_path=model, output_dir=str(out), max_steps=steps, val_size=0.0, eval_strategy="no",
                  load_best_model_at_end=False, save_steps=10_000, logging_steps=5, plot_loss=False,
                  include_num_input_tokens_seen=True, dataset_dir=str(ROOT))
    for key in ("eval_steps", "per_device_eval_batch_size", "metric_for_best_model"):
        config.pop(key, None)
    path = work / f"{config_name}"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(["llamafactory-cli", "train", str(path)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1"})
    results = json.loads((out / "all_results.json").read_text(encoding="utf-8"))
    tokens = results.get("num_input_tokens_seen")
    return {"config": config_name, "steps": steps, "train_runtime_s": results["train_runtime"], "tokens": tokens,
            "tokens_per_s": round(tokens / results["train_runtime"], 1) if tokens else None,
            "peak_rss_mb": round(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--model")
    args = parser.parse_args()
    cpu = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            subprocess.run([sys.executable, "-m", "prep.cli", "build", "data/seed", "--name", "psy_seed"], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run([sys.executable, "-m", "prep.cli", "tiny-model", str(work / "tiny"), "--hidden-size", "256", "--layers", "4"],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            model = str(work / "tiny")
        rows = [run(name, model, args.steps, work, cpu) for name in ("llama3_lora_sft.yaml", "llama3_lora_sft_fast.yaml")]
    print(f"device: {'CPU (tiny model; NOT GPU figures)' if cpu else torch.cuda.get_device_name(0)}")
    for row in rows:
        print(json.dumps(row))
    if rows[0]["tokens_per_s"] and rows[1]["tokens_per_s"]:
        print(f"tuned / plain tokens/s: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}")


if __name__ == "__main__":
    main()
