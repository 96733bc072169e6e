#!/bin/bash
# One device call (≈ 8 min on an H200): the #17.3 sampling figures. Results land in $OUT (or ./device-out).
# fp32: batch 64, 1,000 steps, corrector on, γ = 2 on an adapter; then bf16 autocast and torch.compile at 200 steps.
set -u
OUT=${OUT:-device-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
B=benchmarks/device/bench_sampling_gpu.py
timeout 260 python $B --variant fp32 --budget-s 200 --out "$OUT" > "$OUT/fp32.log" 2>&1
timeout 100 python $B --variant bf16 --steps 200 --budget-s 60 --out "$OUT" > "$OUT/bf16.log" 2>&1
timeout 130 python $B --variant compile --steps 200 --budget-s 60 --out "$OUT" > "$OUT/compile.log" 2>&1
tail -n 40 "$OUT"/*.json
