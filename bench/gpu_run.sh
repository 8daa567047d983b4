#!/usr/bin/env bash
# The GPU session's benchmarks in one go (device machine: no network; wheels carried in .whl/, the bench
# tokenizer in models/bench_tok/). Usage there: bash bench/gpu_run.sh [STEP ...]  (results also under $OUT).
# Steps: distill, chat:N (bench_chat.py with N new tokens a reply), chatc:N (the same plus chat.py --compile,
# which compiles an 8B model at load: give it a device call of its own); default: distill chat:48. chat:160 is
# about the seed answers' median length (162 characters); one step of each kind fits in one 600 s device call,
# and chatc:N is refused beside another step. A failed or timed-out step is named at the end, and the exit is 1.
set -u -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DISABLE_VERSION_CHECK=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STEPS=${*:-distill chat:48}
for step in $STEPS; do
    case $step in distill|chat:[1-9]*|chatc:[1-9]*) ;; *) echo "unknown step '$step': expected distill, chat:N or chatc:N" >&2; exit 2;; esac
done
case " $STEPS " in *" chatc:"*) [ "$(echo $STEPS | wc -w)" -eq 1 ] || { echo "chatc:N needs a device call of its own (it compiles an 8B model)" >&2; exit 2; };; esac
FAILED=""
record() {  # record STEP RC: name a failed step (124: killed by its timeout)
    [ "$2" -eq 0 ] || FAILED="$FAILED $1(rc=$2$([ "$2" -eq 124 ] && echo ', timeout'))"
}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
echo "cpus: $(nproc)"; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case " $STEPS " in *" distill "*)
    timeout 200 python3 bench/bench_distill.py --rounds 25 --processes 1,2,4 2>&1 | tee "$OUT/distill.txt"
    record distill "${PIPESTATUS[0]}";;
esac
case " $STEPS " in *" chat:"*|*" chatc:"*) ;; *) [ -z "$FAILED" ] || { echo "failed:$FAILED" >&2; exit 1; }; exit 0;; esac
python3 - <<'PY' 2>&1 | tail -2 || { echo "building the 8B-shaped model failed" >&2; exit 1; }
import torch
from transformers import AutoTokenizer
from prep.tiny_model import LLAMA3_8B_SHAPE, llama_config, save_random_llama
tokenizer = AutoTokenizer.from_pretrained("models/bench_tok")
config = llama_config(tokenizer, **{**LLAMA3_8B_SHAPE, "vocab_size": None})  # the tokenizer's 3k vocabulary: replies decode
print(save_random_llama("/tmp/m8b", tokenizer, config, device="cuda", dtype=torch.bfloat16))
PY
for step in $STEPS; do
    case $step in chat:*)
        timeout 330 python3 bench/bench_chat.py --model /tmp/m8b --new-tokens "${step#chat:}" 2>&1 \
            | grep -v "Loading weights\|Warning" | tee "$OUT/chat_${step#chat:}.txt"
            record "$step" "${PIPESTATUS[0]}";;
        chatc:*)
            timeout 500 python3 bench/bench_chat.py --model /tmp/m8b --new-tokens "${step#chatc:}" --compile 2>&1 \
                | grep -v "Loading weights\|Warning" | tee "$OUT/chat_compile_${step#chatc:}.txt"
            record "$step" "${PIPESTATUS[0]}";;
    esac
done
[ -z "$FAILED" ] || { echo "failed:$FAILED" >&2; exit 1; }
