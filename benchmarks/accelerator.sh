#!/usr/bin/env bash
# Every accelerator check in one call (a lent GPU is short of time, not memory): parity with the CPU, the side-by-side
# benchmark in bfloat16 (the target: batch 64, against PyTorch eager AMP) and float32, the Delta-STN step cost, and
# the real trainer with its data pipeline. Each part has its own time limit so that one hang loses only that part.
#
#   OUT=/tmp/jsr-accel bash benchmarks/accelerator.sh          # results: $OUT/*.json, $OUT/log
#   PARTS="infer train loop" OUT=... bash benchmarks/accelerator.sh   # only these parts (default: all but infer)
#
# Parts: parity, bench_bf16, bench_f32 (all four cases against PyTorch), deltastn, infer (the two inference cases
# in both dtypes against PyTorch, and jsr alone with four tiles per call), train (the real trainer), loop (the
# trainer's host side alone, benchmarks/trainer_loop.py).
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
PARTS=${PARTS:-parity bench_bf16 bench_f32 deltastn train loop}
log() { echo "== $(date +%T) $*"; }
want() { [[ " $PARTS " == *" $1 "* ]]; }
quiet() { grep -v "^WARNING\|^I0000\|^E0000"; }

log machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
$PY -c "import jax, flax, optax, torch, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'torch', torch.__version__, jax.devices())" || exit 1

if want parity; then
  log parity
  timeout 120 $PY benchmarks/accelerator_parity.py --batch 8 --json >"$OUT/parity.txt" 2>&1
  echo "exit $?" >>"$OUT/parity.txt"
  tail -4 "$OUT/parity.txt"
fi

if want bench_bf16; then
  log "benchmark bfloat16 batch 64"
  timeout 200 $PY benchmarks/run.py --torch-device cuda --dtype bfloat16 --batch 64 --repeats 20 --warmup 3 \
    --tiled-repeats 5 --json "$OUT/bench_bf16_b64.json" 2>&1 | quiet
fi

if want bench_f32; then
  log "benchmark float32 batch 64"
  timeout 150 $PY benchmarks/run.py --torch-device cuda --dtype float32 --batch 64 --repeats 20 --warmup 3 \
    --tiled-repeats 5 --json "$OUT/bench_f32_b64.json" 2>&1 | quiet
fi

if want infer; then
  for dtype in bfloat16 float32; do
    log "inference $dtype against PyTorch"
    timeout 120 $PY benchmarks/run.py --torch-device cuda --dtype $dtype --cases infer_128,infer_1024_tiled \
      --repeats 20 --warmup 3 --tiled-repeats 5 --json "$OUT/infer_$dtype.json" 2>&1 | quiet
  done
  log "inference bfloat16, jsr alone, four tiles per call"
  timeout 60 $PY benchmarks/run.py --no-torch --dtype bfloat16 --cases infer_1024_tiled --tile-batch 4 \
    --tiled-repeats 5 --json "$OUT/infer_bfloat16_tb4.json" 2>&1 | quiet | head -1
fi

if want deltastn; then
  log "Delta-STN step, batch 64"
  timeout 90 $PY benchmarks/deltastn_step.py --batch 64 --runs 20 --json >"$OUT/deltastn.txt" 2>&1
  tail -6 "$OUT/deltastn.txt"
fi

if want train; then
  for threads in ${TRAIN_THREADS:-0}; do
    log "trainer: SRResNet 16x64, bfloat16, batch 64, real data pipeline (bundled photos), threads $threads"
    rm -rf /tmp/jsr-run
    timeout 120 $PY -m jsr.train --config=configs/quickstart.py --workdir=/tmp/jsr-run \
      --config.model.n_feats=64 --config.model.num_blocks=16 --config.model.bicubic_skip=False \
      --config.batch_size=64 --config.compute_dtype=bfloat16 --config.num_train_steps=1000 \
      --config.optim.g.decay_steps=1000 --config.log_every_steps=100 --config.eval_every_steps=1000 \
      --config.checkpoint_every_steps=1000 --config.data.num_threads=$threads >"$OUT/train_t$threads.txt" 2>&1
    echo "exit $?" >>"$OUT/train_t$threads.txt"
    quiet <"$OUT/train_t$threads.txt" | grep -v "cuda_timer" | tail -13
    cp /tmp/jsr-run/metrics.jsonl "$OUT/train_t${threads}_metrics.jsonl" 2>/dev/null
  done
fi

if want loop; then
  for threads in 0 2; do
    log "the trainer's host side alone (input pipeline + loop around a free step), batch 64, threads $threads"
    timeout 90 $PY benchmarks/trainer_loop.py --batch 64 --steps 1000 --threads $threads 2>&1 | quiet | tail -4
  done
fi
log done
