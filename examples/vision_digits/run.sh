#!/usr/bin/env bash
# bash examples/vision_digits/run.sh [OVERRIDES...]
#
# Both stages of the offline vision-language example, in order; stage 2 starts from stage 1's
# final checkpoint. Extra arguments are config overrides given to both stages
# (e.g. `max_steps=2` for a smoke test). RUNS (default runs/vision_digits) is where they write; a
# second run.sh replaces the first one's runs there (train.overwrite=true), unless it resumes them.
set -euo pipefail
cd "$(dirname "$0")/../.."          # the repository root: the configs' output_dir is relative to it
RUNS=${RUNS:-runs/vision_digits}
OVERWRITE=train.overwrite=true
for arg in "$@"; do
    case "$arg" in resume=*|train.resume=*) OVERWRITE= ;; esac
done

start=$SECONDS
mmtune train examples/vision_digits/stage1.yaml output_dir="$RUNS/stage1" $OVERWRITE "$@"
echo "stage 1: $((SECONDS - start)) s"
mark=$SECONDS
mmtune train examples/vision_digits/stage2.yaml output_dir="$RUNS/stage2" model.init_from="$RUNS/stage1/final" \
    $OVERWRITE "$@"
echo "stage 2: $((SECONDS - mark)) s; both stages: $((SECONDS - start)) s"
# every task, not only the digit questions: eval.json's "groups" has accuracy per value of the rows' `task`
mmtune eval --checkpoint "$RUNS/stage2/final" --data examples/vision_digits/data/eval.jsonl --metrics accuracy \
    --max-new-tokens 24 --json "$RUNS/stage2/eval_all_tasks.json" --predictions "$RUNS/stage2/predictions_all_tasks.jsonl" >/dev/null
python - "$RUNS/stage2" <<'PY'
import json, sys
every = json.load(open(f"{sys.argv[1]}/eval_all_tasks.json"))
print("held-out accuracy by task:", ", ".join(f"{t} {m['accuracy']:.3f}" for t, m in every["groups"]["task"].items()),
      f"(all tasks {every['accuracy']:.3f})")
stage2 = json.load(open(f"{sys.argv[1]}/eval.json"))
print(f"digit accuracy (stage 2 eval.json, {stage2['best']['checkpoint']}):", stage2["accuracy"])
PY
