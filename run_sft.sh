#!/usr/bin/env bash
# Reproducible LoRA SFT runs with LLaMA-Factory: build the data, train, merge.
#
#   bash run_sft.sh                       # real run: factory_configs/llama3_lora_sft.yaml on a CUDA GPU
#   bash run_sft.sh --model PATH_OR_ID    # same, with a local model folder or a hub id
#   bash run_sft.sh demo                  # CPU demo: tiny local model, train, merge, one chat answer
#
# Exit codes: 0 done; 2 bad usage; 3 no CUDA device; 4 model not found;
#             5 data build failed; 10 training failed; 11 merge failed; 12 chat failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$PWD"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
export DISABLE_VERSION_CHECK=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false

die() { local code=$1; shift; echo "run_sft.sh: error: $*" >&2; exit "$code"; }
step() { echo; echo "==> $*"; }

MODE=real
CONFIG=factory_configs/llama3_lora_sft.yaml
MERGE_CONFIG=factory_configs/llama3_merge.yaml
MODEL=""
DATA_NAME=psy_seed

while [[ $# -gt 0 ]]; do
  case "$1" in
    demo) MODE=demo; shift ;;
    --model) [[ $# -ge 2 ]] || die 2 "--model needs a path or hub id"; MODEL=$2; shift 2 ;;
    --model=*) MODEL=${1#--model=}; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die 2 "unknown argument '$1' (expected: demo, --model PATH_OR_ID, --help)" ;;
  esac
done

command -v llamafactory-cli >/dev/null || die 2 "llamafactory-cli not found; run 'make setup install' (or 'make demo') first."
command -v prep >/dev/null || die 2 "the prep command is not installed; run 'make install' first."

build_seed_data() {
  step "Building datasets from data/seed (registry: ./dataset_info.json)"
  prep build data/seed --name "$DATA_NAME" || die 5 "prep build failed on data/seed."
}

yaml_value() {  # yaml_value FILE KEY -> value of a top-level key
  python - "$1" "$2" <<'PY'
import sys, yaml
print(yaml.safe_load(open(sys.argv[1], encoding="utf-8")).get(sys.argv[2], ""))
PY
}

if [[ "$MODE" == demo ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
  CONFIG=factory_configs/demo_cpu_lora_sft.yaml
  MERGE_CONFIG=factory_configs/demo_cpu_merge.yaml
  TINY=$(yaml_value "$CONFIG" model_name_or_path)
  build_seed_data
  step "Building the tiny local model in $TINY (random weights, Llama-3 tokenizer layout)"
  prep tiny-model "$TINY" --data data/seed --hidden-size 128 || die 4 "could not build the tiny model."
  OUT=$(yaml_value "$CONFIG" output_dir)
  MERGED=$(yaml_value "$MERGE_CONFIG" export_dir)
  rm -rf "$OUT" "$MERGED"
  step "LoRA SFT on CPU: llamafactory-cli train $CONFIG"
  llamafactory-cli train "$CONFIG" || die 10 "training failed (see the output above)."
  step "Merging the adapter: llamafactory-cli export $MERGE_CONFIG"
  llamafactory-cli export "$MERGE_CONFIG" || die 11 "merge failed (see the output above)."
  QUESTION=$(python -c 'import json; print(json.load(open("data/'"$DATA_NAME"'_alpaca.json", encoding="utf-8"))[0]["instruction"])')
  step "Asking the merged model a question it was trained on: $QUESTION"
  python chat.py --model "$MERGED" --prompt "$QUESTION" --max-new-tokens 160 --temperature 0 || die 12 "chat.py failed."
  echo
  echo "Loss curve:   $OUT/training_loss.png (eval: $OUT/training_eval_loss.png)"
  echo "Merged model: $MERGED"
  echo "(The demo model is tiny and trained for seconds: its Chinese is not meant to be good.)"
  exit 0
fi

# Real run: fail fast, before anything slow happens.
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || die 3 "no CUDA device found; the real run needs a GPU (use 'bash run_sft.sh demo' for the CPU demo)."
MODEL=${MODEL:-$(yaml_value "$CONFIG" model_name_or_path)}
if [[ "$MODEL" == /* || "$MODEL" == .* || "$MODEL" == ~* || -e "$MODEL" ]]; then
  [[ -f "$MODEL/config.json" ]] || die 4 "model folder '$MODEL' not found or has no config.json; pass --model with a local Llama-3 folder or a hub id."
elif [[ "${HF_HUB_OFFLINE:-0}" == 1 ]]; then
  die 4 "model '$MODEL' is a hub id but HF_HUB_OFFLINE=1; download it first or pass --model with a local folder."
fi
[[ -s "data/${DATA_NAME}_alpaca.json" ]] || build_seed_data

OUT=$(yaml_value "$CONFIG" output_dir)
MERGED=$(yaml_value "$MERGE_CONFIG" export_dir)
step "LoRA SFT: llamafactory-cli train $CONFIG (model: $MODEL)"
llamafactory-cli train "$CONFIG" "model_name_or_path=$MODEL" || die 10 "training failed (see the output above)."
step "Merging the adapter: llamafactory-cli export $MERGE_CONFIG"
llamafactory-cli export "$MERGE_CONFIG" "model_name_or_path=$MODEL" "adapter_name_or_path=$OUT" "export_dir=$MERGED" \
  || die 11 "merge failed (see the output above)."
echo
echo "Loss curve:   $OUT/training_loss.png (eval: $OUT/training_eval_loss.png)"
echo "Merged model: $MERGED"
echo "Talk to it:   python chat.py --model $MERGED"
