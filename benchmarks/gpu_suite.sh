python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# The GPU checks of adawise in one run (about 5.5 minutes; every part has its own time limit, 9.2
# minutes in all at worst; bench_step writes its JSON after every repeat, so a part cut short still
# leaves figures). Run from the repository root on the GPU machine, carrying .whl/ (the open_clip,
# ftfy and wcwidth wheels; .whl/pytest/ holds pytest for a machine without it):
#     bash benchmarks/gpu_suite.sh
# bench_step's default methods include adawise-windowed (issue 16's registered configuration; target <= 1.8x on
# a GPU, checked in the JSON's "targets"; its per-sample zero-shot mix is at its worst on random weights).
# Writes into $OUT (default /tmp/gpu_suite): step_vitb16.json, step_vitl14.json, knn_gpu.json,
# corruptions_gpu.json / .md (the 15 ImageNet-C corruptions, batch 64 at 224, against the reference's
# single-thread CPU throughput recorded in benchmarks/results/corruptions_cpu.json; target 50x),
# RESULTS_gpu.md (the tables, from benchmarks/results_to_md.py) and gpu_suite.log (everything printed).
# A part that fails or times out prints "FAILED <part>" and the next part runs.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"

part() {  # part NAME SECONDS COMMAND...: run with a time limit, output tee'd into the log
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "FAILED $name (exit $rc)" | tee -a "$LOG"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "FAILED nvidia-smi"
    python3 -c "import torch, open_clip, botorch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'open_clip', open_clip.__version__, 'botorch', botorch.__version__, 'gpu', torch.cuda.get_device_name(0))" \
        || echo "FAILED imports"
} 2>&1 | tee -a "$LOG"

# bench_step's default methods include the TTA baselines tent (a backward pass per batch) and tda
part "bench_step ViT-B-16" 160 python3 benchmarks/bench_step.py --device cuda --model ViT-B-16 \
    --json "$OUT/step_vitb16.json"
part "bench_step ViT-L-14" 150 python3 benchmarks/bench_step.py --device cuda --model ViT-L-14 \
    --repeats 2 --batches-per-domain 16 --faithful-batches 3 --micro-reps 10 \
    --extras finetuned-cudagraph,adawise-fast-eager,adawise-fast-bf16live --json "$OUT/step_vitl14.json"
part "bench_knn cuda" 30 python3 benchmarks/bench_knn.py --devices cuda --json "$OUT/knn_gpu.json"
part "bench_corruptions cuda" 120 python3 benchmarks/bench_corruptions.py --device cuda --repeats 5 \
    --reference-json benchmarks/results/corruptions_cpu.json --json "$OUT/corruptions_gpu.json" \
    --markdown "$OUT/corruptions_gpu.md"
# pytest from .whl/pytest/ only if the machine has none (installed behind its own packages);
# test modules whose imports are missing there (e.g. hypothesis) are reported, not fatal
if ! python3 -c "import pytest" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_pytest \
        .whl/pytest/*.whl 2>&1 | tee -a "$LOG" && export PYTHONPATH=$PYTHONPATH:/tmp/site_pytest
fi
part "CUDA tests" 75 python3 -m pytest -q tests -k cuda -p no:cacheprovider --continue-on-collection-errors -rs
part "results_to_md" 15 sh -c "python3 benchmarks/results_to_md.py $OUT/step_vitb16.json $OUT/step_vitl14.json \
$OUT/knn_gpu.json > $OUT/RESULTS_gpu.md"
echo "== done ($(date -u +%H:%M:%S)); files: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
