#!/usr/bin/env bash
# The CUDA path end to end, in one command (about 5 minutes on one GPU):
#   bash scripts/gpu_check.sh [REPORT_DIR]      (default: gpu_report/)
# 1. the CUDA-marked tests (cuda vs cpu masks, fine-tuning with AMP on cuda);
# 2. `medsegdiff segment` of the whole sample on cuda and on cpu, compared with
#    `medsegdiff evaluate` (mean Dice between the two must be >= 0.99);
# 3. `medsegdiff finetune` on 5 sample slices on cuda (AMP), timed;
# 4. benchmarks/sampling.py --shipped on cuda (whole-volume seconds, speed-up).
# Writes REPORT_DIR/report.md. Without an NVIDIA GPU it says so and exits 0, claiming nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${MEDSEGDIFF_PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA GPU on this machine; nothing measured, nothing claimed"
    exit 0
fi
OUT="${1:-gpu_report}"
mkdir -p "$OUT"
REPORT="$OUT/report.md"
T1=sample_data/icbm152_t1.nii.gz
TISSUE=sample_data/icbm152_tissue.nii.gz
MSD=("$PY" -m napari_medsegdiff)
secs() { local s=$SECONDS; "$@" >>"$OUT/log.txt" 2>&1; echo $((SECONDS - s)); }

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo '```'
} >"$REPORT"

echo "== CUDA tests" | tee -a "$OUT/log.txt"
if timeout 300 "$PY" -m pytest -q -m cuda tests/test_cuda.py >>"$OUT/log.txt" 2>&1; then
    tests="passed"
else
    tests="FAILED (see log.txt)"
fi
echo "- CUDA-marked tests: $tests" >>"$REPORT"

echo "== segment: cuda vs cpu" | tee -a "$OUT/log.txt"
gpu_s=$(secs "${MSD[@]}" segment "$T1" -o "$OUT/mask_cuda.nii.gz" --device cuda --overwrite)
cpu_s=$(secs "${MSD[@]}" segment "$T1" -o "$OUT/mask_cpu.nii.gz" --device cpu --overwrite)
"${MSD[@]}" evaluate --pred "$OUT/mask_cuda.nii.gz" --truth "$OUT/mask_cpu.nii.gz" \
    --json "$OUT/cuda_vs_cpu.json" >>"$OUT/log.txt" 2>&1
agree=$("$PY" -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['mean']['dice']:.4f}\")" \
    "$OUT/cuda_vs_cpu.json")
verdict=$("$PY" -c "import sys; print('ok' if float(sys.argv[1]) >= 0.99 else 'BELOW 0.99')" "$agree")
{
    echo "- whole sample volume, product defaults (CLI wall time incl. start-up): cuda ${gpu_s} s, cpu ${cpu_s} s"
    echo "- mask Dice cuda vs cpu: $agree ($verdict)"
} >>"$REPORT"

echo "== finetune on cuda" | tee -a "$OUT/log.txt"
rm -rf "$OUT/finetuned"
ft_s=$(secs "${MSD[@]}" finetune --image "$T1" --labels "$TISSUE" --slices 40,60,80,100,120 \
    --device cuda --out "$OUT/finetuned")
echo "- fine-tune, 5 slices, default steps, cuda (AMP): ${ft_s} s" >>"$REPORT"

echo "== sampling benchmark on cuda" | tee -a "$OUT/log.txt"
{
    echo
    echo '```'
    timeout 240 "$PY" benchmarks/sampling.py --shipped --device cuda 2>>"$OUT/log.txt" || echo "sampling benchmark failed"
    echo '```'
} >>"$REPORT"
cat "$REPORT"
