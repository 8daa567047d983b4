#!/usr/bin/env bash
# Reproducible LoRA SFT runs with LLaMA-Factory: check, train, merge, report.
#
#   bash run_sft.sh [demo] [--config FILE] [--model PATH_OR_ID] [--dataset NAMES] [--output DIR]
#                   [--gpus 0,1] [--resume] [--no-merge] [--force] [--dry-run]
#
#   bash run_sft.sh                       real run: factory_configs/llama3_lora_sft.yaml on a CUDA GPU
#   bash run_sft.sh --model /models/Meta-Llama-3-8B-Instruct --gpus 0,1
#   bash run_sft.sh demo                  CPU demo: tiny local model, train, merge, one chat answer
#
# A run folder (default: the parent of the config's output_dir) gets run_config.yaml,
# run_manifest.json, lora/, merged/ and report.md. Multi-node: set NNODES, NODE_RANK,
# MASTER_ADDR, MASTER_PORT as for llamafactory-cli (FORCE_TORCHRUN=1 is set for you).
#
# Exit codes: 0 done; 2 bad usage or failed check; 5 data build failed; 10 training failed;
#             11 merge failed; 12 chat failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$PWD"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
export DISABLE_VERSION_CHECK=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false

die() { local code=$1; shift; echo "run_sft.sh: error: $*" >&2; exit "$code"; }
step() { echo; echo "==> $*"; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

ARGS=("$@")
MODE=real CONFIG="" MODEL="" DATASET="" OUTPUT="" GPUS="" RESUME=0 MERGE=1 FORCE=0 DRY=0
DATA_NAME=psy_seed
need() { [[ $# -ge 2 && -n "$2" ]] || die 2 "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    demo) MODE=demo; shift ;;
    --config) need "$@"; CONFIG=$2; shift 2 ;;
    --model) need "$@"; MODEL=$2; shift 2 ;;
    --dataset) need "$@"; DATASET=$2; shift 2 ;;
    --output) need "$@"; OUTPUT=$2; shift 2 ;;
    --gpus) need "$@"; GPUS=$2; shift 2 ;;
    --resume) RESUME=1; shift ;;
    --no-merge) MERGE=0; shift ;;
    --force) FORCE=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die 2 "unknown argument '$1' (see 'bash run_sft.sh --help')" ;;
  esac
done
command -v llamafactory-cli >/dev/null || die 2 "llamafactory-cli not found; run 'make install' (or 'make demo') first."
command -v prep >/dev/null || die 2 "the prep command is not installed; run 'make install' first."

if [[ "$MODE" == demo ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
  CONFIG=${CONFIG:-factory_configs/demo_cpu_lora_sft.yaml}
  MERGE_CONFIG=factory_configs/demo_cpu_merge.yaml
  FORCE=1
else
  CONFIG=${CONFIG:-factory_configs/llama3_lora_sft.yaml}
  MERGE_CONFIG=factory_configs/llama3_merge.yaml
fi
[[ -f "$CONFIG" ]] || die 2 "--config $CONFIG: no such file."

if [[ "$MODE" == demo || ! -s "data/${DATA_NAME}_alpaca.json" ]]; then
  step "Building datasets from data/seed (registry: ./dataset_info.json)"
  prep build data/seed --name "$DATA_NAME" || die 5 "prep build failed on data/seed."
fi
if [[ "$MODE" == demo ]]; then
  TINY=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["model_name_or_path"])' "$CONFIG")
  step "Building the tiny local model in $TINY (random weights, Llama-3 tokenizer layout)"
  prep tiny-model "$TINY" --data data/seed --hidden-size 128 || die 2 "could not build the tiny model."
fi

CHECK=(--config "$CONFIG")
[[ -n "$MODEL" ]] && CHECK+=(--model "$MODEL")
[[ -n "$DATASET" ]] && CHECK+=(--dataset "$DATASET")
[[ -n "$OUTPUT" ]] && CHECK+=(--output "$OUTPUT")
(( RESUME )) && CHECK+=(--resume)
(( FORCE )) && CHECK+=(--force)
if [[ -n "$GPUS" ]]; then
  export CUDA_VISIBLE_DEVICES=$GPUS
  if [[ "$GPUS" == *,* || -n "${NNODES:-}" ]]; then export FORCE_TORCHRUN=1; fi
fi

step "Checking the run (config, datasets, model, device, output folder)"
if (( DRY )); then
  RUN_DIR=$(prep run-check "${CHECK[@]}" | tail -n 1) || exit 2
  echo "dry run: all checks passed; would train into $RUN_DIR/lora${GPUS:+ on GPUs $GPUS}$( (( MERGE )) && echo " and merge into $RUN_DIR/merged")."
  exit 0
fi
# LLaMA-Factory's parser logs to stdout: the run folder is the last line.
RUN_DIR=$(prep run-check "${CHECK[@]}" --write --command "run_sft.sh ${ARGS[*]}" | tail -n 1) || exit 2
(( RESUME )) || rm -rf "$RUN_DIR/lora" "$RUN_DIR/merged"

step "LoRA SFT: llamafactory-cli train $RUN_DIR/run_config.yaml"
if ! llamafactory-cli train "$RUN_DIR/run_config.yaml"; then
  prep run-finish "$RUN_DIR" --exit-code 10 --stage train
  die 10 "training failed (see the output above); fix it and re-run with --resume to continue from the last checkpoint."
fi

if (( MERGE )); then
  MODEL_PATH=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["model_name_or_path"])' "$RUN_DIR/run_config.yaml")
  step "Merging the adapter: llamafactory-cli export $MERGE_CONFIG"
  if ! llamafactory-cli export "$MERGE_CONFIG" "model_name_or_path=$MODEL_PATH" "adapter_name_or_path=$RUN_DIR/lora" "export_dir=$RUN_DIR/merged"; then
    prep run-finish "$RUN_DIR" --exit-code 11 --stage merge
    die 11 "merge failed (see the output above)."
  fi
fi
prep run-finish "$RUN_DIR" --exit-code 0

step "Run report ($RUN_DIR/report.md)"
prep report-run "$RUN_DIR"

if [[ "$MODE" == demo ]]; then
  QUESTION=$(python -c 'import json; print(json.load(open("data/'"$DATA_NAME"'_alpaca.json", encoding="utf-8"))[0]["instruction"])')
  step "Asking the merged model a question it was trained on: $QUESTION"
  python chat.py --model "$RUN_DIR/merged" --prompt "$QUESTION" --max-new-tokens 160 --temperature 0 || die 12 "chat.py failed."
  echo
  echo "Loss curve:   $RUN_DIR/lora/training_loss.png (eval: $RUN_DIR/lora/training_eval_loss.png)"
  echo "Merged model: $RUN_DIR/merged"
  echo "(The demo model is tiny and trained for seconds: its Chinese is not meant to be good.)"
else
  echo
  echo "Loss curve:   $RUN_DIR/lora/training_loss.png (eval: $RUN_DIR/lora/training_eval_loss.png)"
  if (( MERGE )); then
    echo "Merged model: $RUN_DIR/merged"
    echo "Talk to it:   python chat.py --model $RUN_DIR/merged"
  else
    echo "Adapter:      $RUN_DIR/lora (not merged: python chat.py --base MODEL --adapter $RUN_DIR/lora)"
  fi
fi
