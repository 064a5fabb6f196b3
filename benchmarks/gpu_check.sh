#!/usr/bin/env bash
# The GPU check of packing and variable-length encoding, one script, at most 8 minutes on one H100/H200:
#   OUT=/path/to/results bash benchmarks/gpu_check.sh        (the device tool sets $OUT itself)
# Writes into $OUT: nvidia-smi.txt, gpu_check.log, pytest_varlen.txt, packing_gpu.json, audio_gpu.json,
# features_gpu.json and summary.json (each target: value, threshold, met). Exit status 1 if a step failed.
# The machine's own CUDA torch is kept: the project installs with --no-deps. Packages missing there
# (librosa, soundfile, soxr, ... have no network to come from) can travel as wheels in .whl/ (see
# the device README); they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
status=0

log() { echo "== $(date +%T) $*" | tee -a "$LOG"; }

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going on failure
    local name=$1 limit=$2
    shift 2
    log "$name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        log "$name FAILED (exit $rc$([ $rc -eq 124 ] && echo ', time limit'))"
        status=1
    fi
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || log "nvidia-smi failed"

if compgen -G ".whl/*.whl" >/dev/null; then
    log "installing carried wheels into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import mmtune" 2>/dev/null; then
    log "installing mmtune (editable, no dependencies: the machine's torch stays)"
    $PY -m pip install -q --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY - <<'PY' 2>&1 | tee -a "$LOG"
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO GPU")
for name in ("transformers", "peft", "tokenizers", "librosa", "soundfile", "soxr", "flash_attn"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:
        print(name, "MISSING:", type(e).__name__, e)
PY

step pytest-varlen 90 bash -c "$PY -m pytest -q -p no:cacheprovider -rs tests/model/test_varlen.py >'$OUT/pytest_varlen.txt' 2>&1; rc=\$?; tail -5 '$OUT/pytest_varlen.txt'; exit \$rc"
step bench-packing 210 $PY -m mmtune.cli bench packing --device cuda --preset 0.5b --json "$OUT/packing_gpu.json"
step bench-audio-encoder 60 $PY -m mmtune.cli bench audio-encoder --device cuda --preset small --json "$OUT/audio_gpu.json"
step bench-features 60 $PY -m mmtune.cli bench features --device cuda --json "$OUT/features_gpu.json"

$PY - "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.exists() else {}
packing, audio = load("packing_gpu.json"), load("audio_gpu.json")
targets = {  # name: (value, threshold, higher is better)
    "packed_vs_padded_speedup": (packing.get("speedup"), 1.8, True),
    "packed_mfu": (packing.get("packed_mfu"), 0.40, True),
    "bf16_logits_rel_err": (packing.get("logits_rel_err"), 1e-2, False),
    "audio_encoder_speedup": (audio.get("speedup"), 4.0, True),
}
summary = {name: {"value": v, "threshold": t, "met": None if v is None else (v >= t if up else v <= t)}
           for name, (v, t, up) in targets.items()}
# what the bf16 error is read against: the padded model on each sample alone vs in its padded batch
summary["bf16_logits_rel_err_floor"] = {"value": packing.get("alone_logits_rel_err"), "threshold": None, "met": None}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PY
log "done (status $status)"
exit $status
