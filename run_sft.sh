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

CALLER=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$PWD"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
  export PATH="$ROOT/.venv/bin:$PATH"
fi
export DISABLE_VERSION_CHECK=1 GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false

die() { local code=$1; shift; echo "run_sft.sh: error: $*" >&2; exit "$code"; }
step() { echo; echo "==> $*"; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }  # the comment block above

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
# --config, --output and a local --model are relative to the folder the script was run from, not to the repo.
from_caller() { if [[ -z "$1" || "$1" == /* || "$CALLER" == "$ROOT" ]]; then printf '%s' "$1"; else printf '%s' "$CALLER/$1"; fi; }
CONFIG=$(from_caller "$CONFIG") OUTPUT=$(from_caller "$OUTPUT")
if [[ -n "$MODEL" && -e "$CALLER/$MODEL" ]]; then MODEL=$(from_caller "$MODEL"); fi
command -v llamafactory-cli >/dev/null || die 2 "llamafactory-cli not found; run 'make install' (or 'make demo') first."
command -v prep >/dev/null || die 2 "the prep command is not installed; run 'make install' first."

if [[ "$MODE" == demo ]]; then
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=""
  CONFIG=${CONFIG:-factory_configs/demo_cpu_lora_sft.yaml}
  MERGE_CONFIG=factory_configs/demo_cpu_merge.yaml
else
  CONFIG=${CONFIG:-factory_configs/llama3_lora_sft.yaml}
  MERGE_CONFIG=factory_configs/llama3_merge.yaml
fi
[[ -f "$CONFIG" ]] || die 2 "--config $CONFIG: no such file."
TINY=""
if [[ "$MODE" == demo ]]; then
  # The demo (re)builds its tiny model only in a new folder or over a tiny model prep built, never over a model of
  # yours (with --model, that model is trained as it is). Only the demo's own runs/demo is redone by every demo: a run
  # folder you name, or one from your --config, is not.
  DEMO=$(python - "$CONFIG" "$MODEL" "$OUTPUT" <<'PY'
import sys
from pathlib import Path
from prep.errors import PrepError
from prep.runs import is_demo_run_folder, load_config
from prep.tiny_model import demo_model_folder
config, model, output = sys.argv[1:4]
try:
    tiny = "" if model else str(load_config(Path(config)).get("model_name_or_path") or "")
    if tiny:
        demo_model_folder(tiny)
    print(tiny)
    print(int(is_demo_run_folder(Path(config), output)))
except PrepError as err:
    print(f"run_sft.sh: error: {err}", file=sys.stderr)
    sys.exit(2)
PY
  ) || exit 2
  TINY=${DEMO%$'\n'*}
  if [[ "${DEMO##*$'\n'}" == 1 ]]; then FORCE=1; fi
fi

# The seed datasets are built only when missing: a psy_seed you built with more data (data/feedback) stays.
TO_BUILD=()
[[ -s "data/${DATA_NAME}_alpaca.json" ]] || TO_BUILD+=("data/${DATA_NAME}_*.json from data/seed")
if [[ -n "$TINY" && ! -f "$TINY/config.json" ]]; then TO_BUILD+=("the tiny model in $TINY"); fi
BUILT_FIRST=()  # a dry run writes nothing: it checks everything but what the run would build first
if (( DRY )) && (( ${#TO_BUILD[@]} )); then
  [[ -s "data/${DATA_NAME}_alpaca.json" ]] || BUILT_FIRST+=(--data-built-first "$DATA_NAME")
  [[ -z "$TINY" || -f "$TINY/config.json" ]] || BUILT_FIRST+=(--model-built-first)
fi
if [[ ! -s "data/${DATA_NAME}_alpaca.json" ]] && (( ! DRY )); then
  step "Building datasets from data/seed (registry: ./dataset_info.json)"
  prep build data/seed --name "$DATA_NAME" || die 5 "prep build failed on data/seed."
fi
if [[ -n "$TINY" ]] && (( ! DRY )); then  # the demo's model, rebuilt by every demo
  step "Building the tiny local model in $TINY (random weights, Llama-3 tokenizer layout)"
  prep tiny-model "$TINY" --data data/seed --hidden-size 128 || die 2 "could not build the tiny model."
fi

CHECK=(--config "$CONFIG" ${BUILT_FIRST[@]+"${BUILT_FIRST[@]}"})  # (bash < 4.4: an empty array is unset)
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
  if (( ${#TO_BUILD[@]} )); then
    printf -v BUILDS '%s and ' "${TO_BUILD[@]}"
    echo "dry run: the run would first build ${BUILDS% and } (not checked: built by the run)."
  fi
  echo "dry run: all checks passed; would train into $RUN_DIR/lora${GPUS:+ on GPUs $GPUS}$( (( MERGE )) && echo " and merge into $RUN_DIR/merged")."
  exit 0
fi
# LLaMA-Factory's parser logs to stdout: the run folder is the last line.
RUN_DIR=$(prep run-check "${CHECK[@]}" --write --command "run_sft.sh ${ARGS[*]:-}" | tail -n 1) || exit 2
(( RESUME )) || rm -rf "$RUN_DIR/lora" "$RUN_DIR/merged"
STAGE=train CHILD=""
SIGNALS=(INT TERM HUP QUIT)
# A stage runs in a process group of its own and the script waits for it: a signal to the script (Ctrl-C, kill PID,
# a closed terminal or dropped SSH session, Ctrl-\) is handled at once, not when the stage ends, and is passed on to
# the whole stage (torchrun and its workers). If the script itself is killed (kill -9), the stage gets TERM too.
run_stage() {
  local launch=()
  if command -v setsid >/dev/null; then launch+=(setsid); fi
  if setpriv --pdeathsig TERM true 2>/dev/null; then launch+=(setpriv --pdeathsig TERM); fi
  # bash starts a background job with SIGINT and SIGQUIT ignored: give the stage them back (kill -INT of a trainer works)
  if env --default-signal=INT,QUIT true 2>/dev/null; then launch+=(env --default-signal=INT,QUIT); fi
  # (stdin stays the terminal: bash would give a background job /dev/null, and a prompt such as wandb login would fail)
  ${launch[@]+"${launch[@]}"} "$@" <&0 &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}
stop_stage() {  # TERM to the stage's process group, KILL to what is left of it after STOP_GRACE seconds (default 30)
  [[ -n "$CHILD" ]] || return 0
  kill -TERM -- "-$CHILD" 2>/dev/null || kill -TERM "$CHILD" 2>/dev/null || true
  sleep "${STOP_GRACE:-30}" </dev/null >/dev/null 2>&1 &  # (TERM is ignored here: it is stopped with KILL)
  local timer=$!
  wait -n 2>/dev/null || true  # the stage or the grace period, whichever ends first (bash >= 4.3)
  if kill -0 "$timer" 2>/dev/null; then kill -KILL "$timer" 2>/dev/null; else kill -KILL -- "-$CHILD" 2>/dev/null || kill -KILL "$CHILD" 2>/dev/null; fi
  wait "$CHILD" 2>/dev/null || true
  kill -KILL -- "-$CHILD" 2>/dev/null || true  # workers the stage's main process left behind
}
finish() {  # record the end of the run; signals are ignored meanwhile, so a second Ctrl-C cannot leave it 'running'.
  trap '' "${SIGNALS[@]}"  # HINT: after a failure, how to go on (--resume only with a checkpoint to continue from)
  HINT=$(prep run-finish "$RUN_DIR" "$@")
}
# Ctrl-C or kill: the manifest says so (not 'running' for ever), and --resume continues from the last checkpoint.
trap 'trap "" "${SIGNALS[@]}"; stop_stage; finish --exit-code 130 --stage "$STAGE"; die 130 "interrupted during $STAGE; ${HINT:-re-run with --force to start over}."' "${SIGNALS[@]}"

step "LoRA SFT: llamafactory-cli train $RUN_DIR/run_config.yaml"
if ! run_stage llamafactory-cli train "$RUN_DIR/run_config.yaml"; then
  finish --exit-code 10 --stage train
  die 10 "training failed (see the output above); fix it and ${HINT:-re-run with --force to start over}."
fi

if (( MERGE )); then
  STAGE=merge
  # A merge config of the run's own, not key=value overrides: LLaMA-Factory reads those as YAML (a '#' in a path
  # would start a comment).
  python - "$MERGE_CONFIG" "$RUN_DIR" <<'PY' || { finish --exit-code 11 --stage merge; die 11 "could not write $RUN_DIR/merge_config.yaml."; }
import sys, yaml
from pathlib import Path
merge, run_dir = yaml.safe_load(open(sys.argv[1], encoding="utf-8")), Path(sys.argv[2])
train = yaml.safe_load(open(run_dir / "run_config.yaml", encoding="utf-8"))
merge.update(model_name_or_path=train["model_name_or_path"], adapter_name_or_path=str(run_dir / "lora"), export_dir=str(run_dir / "merged"))
(run_dir / "merge_config.yaml").write_text(yaml.safe_dump(merge, allow_unicode=True, sort_keys=False), encoding="utf-8")
PY
  step "Merging the adapter: llamafactory-cli export $RUN_DIR/merge_config.yaml (from $MERGE_CONFIG)"
  if ! run_stage llamafactory-cli export "$RUN_DIR/merge_config.yaml"; then
    finish --exit-code 11 --stage merge
    die 11 "merge failed (see the output above)."
  fi
fi
finish --exit-code 0
trap - "${SIGNALS[@]}"

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
    echo "Talk to it:   python chat.py --model $(printf %q "$RUN_DIR/merged")"  # (quoted: a folder with spaces pastes whole)
  else
    echo "Adapter:      $RUN_DIR/lora (not merged: python chat.py --model BASE_MODEL --adapter $(printf %q "$RUN_DIR/lora"))"
  fi
fi
