#!/usr/bin/env bash
# The CUDA paths this project cannot test on its CPU machines, as one short prepared check (issue 17):
#   1. environment: torch / CUDA / GPU, bf16 support, xformers, the attention backend the capture code picks;
#   2. bench_invert (tiny UNet) in fp32 / fp16 / bf16: throughput, peak memory, BELM round-trip error per dtype;
#   3. bench_sd_shapes: SD-1.5-shaped random-weight models at 512 px (CPU dry run: 64 px) in float32 / bfloat16 /
#      float16 — invert call, calibrate step, feature extraction, BELM round trip;
#   4. the six stages end to end on the device in bfloat16 on a small embedded workspace (a clone of this repo);
#   5. the engine's distributed reductions under torchrun with one process (NCCL on CUDA, gloo in the dry run:
#      benchmarks/ddp_check.py), and with >= 2 GPUs calibrate and train under torchrun with NCCL (`--nproc 2`).
# Every step's output goes to $OUT/<step>.log (JSON where a benchmark writes one); the summary is $OUT/summary.txt.
#
#   bash benchmarks/gpu_check.sh [OUT]                          # on a CUDA machine (a few minutes on one GPU)
#   SPADE_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh     # dry run of the same script on CPU, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${SPADE_GPU_CHECK_DEVICE:-cuda}
OUT=${1:-${OUT:-gpu_check}}
PY=${PYTHON:-$(pwd)/.venv/bin/python}
SPADE=$(dirname "$PY")/spade
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
if [ "$DEVICE" = cpu ]; then SD_SIZE=64; IMAGES=8; else SD_SIZE=512; IMAGES=64; fi

step() {  # step NAME CMD... : run, log, record ok/FAILED with the time taken
  local name=$1; shift
  local t0=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then status=ok; else status="FAILED (exit $?)"; fi
  printf '%-28s %-16s %4ds  %s\n' "$name" "$status" $((SECONDS - t0)) "$OUT/$name.log" | tee -a "$SUMMARY"
}

step env "$PY" - "$DEVICE" <<'EOF'
import sys, torch
from spade_core.diffusion.attention import fast_attention_backend
device = torch.device(sys.argv[1])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if device.type == "cuda":
    print("gpu", torch.cuda.get_device_name(0), "count", torch.cuda.device_count(),
          "bf16", torch.cuda.is_bf16_supported())
try:
    import xformers
    print("xformers", xformers.__version__)
except Exception as err:  # not installed, or built for another torch
    print("xformers not usable:", err)
print("capture attention backend on", device, "->", fast_attention_backend(device))
EOF

for dtype in fp32 fp16 bf16; do
  step "invert_tiny_$dtype" "$PY" benchmarks/bench_invert.py --device "$DEVICE" --dtype "$dtype" --images "$IMAGES" \
    --json "$OUT/invert_tiny_$dtype.json"
done

step sd_shapes "$PY" benchmarks/bench_sd_shapes.py --device "$DEVICE" --size "$SD_SIZE" \
  --dtypes float32,bfloat16,float16 --belm-steps 4

# the six stages on the device in bfloat16, on a clone (this checkout's params and outputs stay untouched)
WS="$OUT/workspace"
rm -rf "$WS"
git clone -q . "$WS" && ln -s "$(dirname "$(dirname "$PY")")" "$WS/.venv"
"$PY" - "$WS/params.yaml" "$DEVICE" <<'EOF'
import sys, yaml
path, device = sys.argv[1], sys.argv[2]
p = yaml.safe_load(open(path))
p["model"].update(device=device, dtype="bfloat16")
p["prepare"]["synthetic"].update(num_train=64, num_test=16)
p["invert"].update(num_steps=4)
p["calibrate"].update(steps=20, num_workers=0)
p["train"].update(epochs=2)
yaml.safe_dump(p, open(path, "w"), sort_keys=False)
EOF
for stage in prepare models invert calibrate train evaluate; do
  step "stage_${stage}_bf16" bash -c "cd '$WS' && '$SPADE' $stage"
done
step predict_bf16 bash -c "cd '$WS' && '$SPADE' predict data/prepared/dataset/test/*.png --out '$OUT/predictions' 2>&1 | tail -3"

step ddp_1proc "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/ddp_check.py \
  --device "$DEVICE"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$DEVICE" = cuda ] && [ "$GPUS" -ge 2 ]; then
  step calibrate_nccl_2proc bash -c "cd '$WS' && '$SPADE' calibrate --nproc 2"
  step train_nccl_2proc bash -c "cd '$WS' && '$SPADE' train --nproc 2"
else
  echo "nccl: skipped ($GPUS GPU(s) on $DEVICE; needs 2)" | tee -a "$SUMMARY"
fi
cp "$WS/artifacts/metrics.json" "$OUT/metrics_bf16.json" 2>/dev/null || true
! grep -q FAILED "$SUMMARY"
