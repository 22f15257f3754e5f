#!/usr/bin/env bash
# Issue 13's GPU measurements in one go (from ../shared/device/run-template.sh). Dry-run on the CPU first:
#   TINY=1 NOINSTALL=1 OUT=/tmp/out bash benchmarks/gpu-run.sh
# then on the device machine from the project root, .carry/ filled by ../shared/device/stage:
#   OUT=$OUT bash benchmarks/gpu-run.sh            (steps 1-4: about 7 minutes on an H200; each step has its own timeout)
#   TRICKS_ONLY=1 TRICKS_TIMEOUT=540 OUT=$OUT bash benchmarks/gpu-run.sh    (step 5 alone, in a session of its own)
# What it measures: (1) the eager and the compiled fast path, 3 seeds each; (2) the captured step
# (train.cuda_graph); (3) a 4-trial study of the recipe with the study defaults (compiled, test at the end);
# (4) concurrency 1, 2, 4 for WORKERS_PER_GPU; (5) the bag of tricks at full scale (issue 20): the recipe's 24-epoch
# validation accuracy as the target, then the fewest epochs each trick (and all) needs to reach it, 3 seeds.
# Results land in $OUT (bench JSONs, study JSON, tricks JSON + PNG, log.txt). Step 5 writes each finished run into
# its JSON as it ends: when its timeout cuts it, the next session continues it with
#   python3 -m benchmarks.tricks <the same flags> --resume <that JSON>
# (the whole of step 5 is some 10 variants x 3 seeds x 24-48 epochs of the full recipe: more than one session).
set -u
ROOT=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATA=$ROOT/.carry/cifar10-jpeg.tar.xz; [ -f "$DATA" ] || DATA=$ROOT/../shared/data/cifar10-jpeg.tar.xz
export SWEEPER_CACHE_DIR=/tmp/swcache PYTHONUNBUFFERED=1 MPLBACKEND=Agg MLFLOW_DISABLE_TELEMETRY=true NO_ALBUMENTATIONS_UPDATE=1
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s); step() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }
SET=(); BENCH=(); TRIALS=4; KS=1,2,4
# the full recipe: 45,000 training images and 5,000 held out for validation, width 1, batch 512, E = 24
# (compiled: once per variant's model, shared by its seeds and epoch counts)
TRICKS=(--train-limit 50000 --val-size 5000 --test-limit 10000 --width 1 --batch-size 512 --epochs 24 --seeds 3
        --set train.compile=true)
if [ "${TINY:-}" = 1 ]; then
  SET=(data.train_limit=1200 data.test_limit=300 data.val_size=200 model.width=0.125 train.epochs=2 train.batch_size=128)
  BENCH=(--train-limit 1200 --test-limit 300 --width 0.125 --epochs 1 --batch-size 128)
  TRICKS=(--train-limit 600 --val-size 200 --test-limit 300 --width 0.125 --batch-size 128 --epochs 2 --seeds 1 --tricks all,ema)
  TRIALS=2; KS=1,2
fi

step start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
if [ -z "${NOINSTALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$ROOT"/.carry/wheels/*.whl || echo "wheel install failed"
  export PYTHONPATH=/tmp/site:$ROOT
fi
python3 -c "import torch, optuna, mlflow, albumentations; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

step "decode the data once, so later steps read the cache"
timeout 90 python3 -c "from pipelines.data import load_source; load_source('$DATA', cache_dir='/tmp/swcache')"

if [ -z "${TRICKS_ONLY:-}" ]; then
step "1a. fast path, eager, 3 seeds"
timeout 150 python3 -m benchmarks.bench --data "$DATA" --variants fast --compile off --warmup --seeds 3 "${BENCH[@]}" --out-dir "$OUT/bench"; echo "rc=$?"
step "1b. fast path, compiled, 3 seeds"
timeout 200 python3 -m benchmarks.bench --data "$DATA" --variants fast --compile on --warmup --seeds 3 "${BENCH[@]}" --out-dir "$OUT/bench"; echo "rc=$?"
step "2. the captured step (train.cuda_graph), 3 seeds"
timeout 150 python3 -m benchmarks.bench --data "$DATA" --variants fast --compile off --warmup --seeds 3 "${BENCH[@]}" --set train.cuda_graph=true --out-dir "$OUT/bench"; echo "rc=$?"

step "3. a study of the recipe with the study defaults: trial times, compile_seconds apart"
S=$(date +%s.%N)
timeout 240 python3 -m sweeper study run gpu --data "$DATA" --n-trials $TRIALS --storage sqlite:////tmp/gpu.db \
  --tracking-uri sqlite:////tmp/gpu-mlflow.db --runs-dir /tmp/gpu-runs --json ${SET[@]:+--set "${SET[@]}"} > "$OUT/study.json"
echo "rc=$? wall=$(python3 -c "import time; print(round(time.time() - $S, 2))")"
python3 - <<'PY'
import json, os, mlflow
out = os.environ.get("OUT", "/tmp/out")
rows = json.load(open(f"{out}/study.json"))["trials"]
client = mlflow.MlflowClient("sqlite:////tmp/gpu-mlflow.db")
for r in rows:
    m = client.get_run(r["mlflow_run_id"]).data.metrics if r.get("mlflow_run_id") else {}
    print(r["number"], r["state"], "value", r.get("value"), "test", r.get("test_accuracy"), "trial_s", m.get("trial_seconds"),
          "compile_s", m.get("compile_seconds"))
PY

step "4. concurrency: trials per hour with K processes sharing the GPU"
timeout 240 python3 -m benchmarks.bench --data "$DATA" --variants "" --concurrency $KS --worker-trials 2 "${BENCH[@]}" --out-dir "$OUT/bench"; echo "rc=$?"

fi

step "5. the bag of tricks: fewest epochs to the recipe's 24-epoch validation accuracy (all, then each alone)"
timeout "${TRICKS_TIMEOUT:-420}" python3 -m benchmarks.tricks --data "$DATA" "${TRICKS[@]}" --out-dir "$OUT/tricks"; echo "rc=$?"

step done
