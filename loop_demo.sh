#!/usr/bin/env bash
# The optimisation loop of the seed (section 5.5) end to end on the tiny CPU model:
# build -> train -> merge -> eval -> review (scripted decisions) -> build again with the
# feedback -> train again -> eval again; the report shows both iterations and the trend.
#   bash loop_demo.sh        (make loop-demo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ -x .venv/bin/python ]] && export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 DISABLE_VERSION_CHECK=1 CUDA_VISIBLE_DEVICES=""
LOOP=runs/loop
EVAL=(--limit 3 --samples 2 --max-new-tokens 48 --temperature 0.7)
rm -rf "$LOOP" runs/loop1 runs/loop2
mkdir -p "$LOOP"

# A training run's own output (LLaMA-Factory's log lines and progress bars, ~600 lines) goes to a log file;
# its last lines are shown if it fails.
train() {
  local log="$LOOP/$1.log"
  shift
  bash run_sft.sh demo "$@" >"$log" 2>&1 || {
    local status=$?
    echo "error: training failed (exit $status); the last lines of $log:" >&2
    tail -n 20 "$log" >&2
    exit "$status"
  }
}

echo "==> iteration 1: build, train, merge"
train train_iter1 --output runs/loop1
echo "==> iteration 1: evaluate"
prep eval --model runs/loop1/merged --out "$LOOP/eval/iter1" --label iter1 "${EVAL[@]}"

echo "==> review: a scripted reviewer writes the reference answer for every counselling question"
python - "$LOOP/eval/iter1/candidates.jsonl" "$LOOP/decisions.jsonl" <<'PY'
import json, sys
cases = {}
for line in open(sys.argv[1], encoding="utf-8"):
    c = json.loads(line)
    cases.setdefault(c["case_id"], c)
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for case_id, c in cases.items():
        decision = {"case_id": case_id, "correction": c["reference"]} if c["kind"] == "counselling" else {"case_id": case_id, "skip": True}
        out.write(json.dumps(decision, ensure_ascii=False) + "\n")
PY
prep review "$LOOP/eval/iter1/candidates.jsonl" --reviewer loop-demo --accept "$LOOP/decisions.jsonl" --out-dir "$LOOP/feedback"

echo "==> iteration 2: build with the feedback (written first: the demo trains on the first 24 rows), train, merge"
prep build data/seed "$LOOP/feedback" --name psy_loop --test-size 0
train train_iter2 --dataset psy_loop_alpaca --output runs/loop2
echo "==> iteration 2: evaluate (compared with iteration 1; the reviewed questions are now training questions: trained_on)"
prep eval --model runs/loop2/merged --out "$LOOP/eval/iter2" --label iter2 --compare "$LOOP/eval/iter1" "${EVAL[@]}"
echo
echo "Report with both iterations and the trend: $LOOP/eval/iter2/report.md ($LOOP/eval/iter2/report.html)"
