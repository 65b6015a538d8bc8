#!/usr/bin/env bash
# Every accelerator check in one call (a lent GPU is short of time, not memory): parity with the CPU, the side-by-side
# benchmark in bfloat16 (the target: batch 64, against PyTorch eager AMP) and float32, the Delta-STN step cost, and
# the real trainer with its data pipeline. Each part has its own time limit so that one hang loses only that part.
#
#   OUT=/tmp/jsr-accel bash benchmarks/accelerator.sh          # results: $OUT/*.json, $OUT/log
#
# Uses the machine's own python3 (jax with CUDA, torch with CUDA); jsr runs from this checkout (PYTHONPATH), and
# packages the machine lacks can be put on EXTRA_SITE (a folder of installed packages, appended to the path).
set -u
OUT=${OUT:-/tmp/jsr-accel}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${EXTRA_SITE:+:$EXTRA_SITE}" PYTHONUNBUFFERED=1
# jax takes this share of GPU memory up front; the PyTorch reference runs beside it in a subprocess
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
PY=${PY:-python3}
log() { echo "== $(date +%T) $*"; }

log machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
$PY -c "import jax, flax, optax, torch, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, jax.devices())" || exit 1

log parity
timeout 120 $PY benchmarks/accelerator_parity.py --batch 8 --json >"$OUT/parity.txt" 2>&1
echo "exit $?" >>"$OUT/parity.txt"
tail -4 "$OUT/parity.txt"

log "benchmark bfloat16 batch 64"
timeout 200 $PY benchmarks/run.py --torch-device cuda --dtype bfloat16 --batch 64 --repeats 20 --warmup 3 \
  --tiled-repeats 5 --json "$OUT/bench_bf16_b64.json" 2>&1 | grep -v "^WARNING\|^I0000\|^E0000"

log "benchmark float32 batch 64"
timeout 150 $PY benchmarks/run.py --torch-device cuda --dtype float32 --batch 64 --repeats 20 --warmup 3 \
  --tiled-repeats 5 --json "$OUT/bench_f32_b64.json" 2>&1 | grep -v "^WARNING\|^I0000\|^E0000"

log "Delta-STN step, batch 64"
timeout 90 $PY benchmarks/deltastn_step.py --batch 64 --runs 20 --json >"$OUT/deltastn.txt" 2>&1
tail -6 "$OUT/deltastn.txt"

log "trainer: SRResNet 16x64, bfloat16, batch 64, real data pipeline (bundled photos)"
rm -rf /tmp/jsr-run
timeout 100 $PY -m jsr.train --config=configs/quickstart.py --workdir=/tmp/jsr-run \
  --config.model.n_feats=64 --config.model.num_blocks=16 --config.model.bicubic_skip=False \
  --config.batch_size=64 --config.compute_dtype=bfloat16 --config.num_train_steps=600 --config.optim.g.decay_steps=600 \
  --config.log_every_steps=100 --config.eval_every_steps=600 --config.checkpoint_every_steps=600 \
  >"$OUT/train.txt" 2>&1
echo "exit $?" >>"$OUT/train.txt"
grep -v "^WARNING\|^I0000\|^E0000" "$OUT/train.txt" | tail -12
cp /tmp/jsr-run/metrics.jsonl "$OUT/train_metrics.jsonl" 2>/dev/null
log done
