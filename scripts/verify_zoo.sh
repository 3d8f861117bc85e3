#!/usr/bin/env bash
# Export every named zoo model (default: squeezenet, shufflenet_v2, regnet and convnext of issue 12) to ONNX in fp32 and fp16 and
# verify each against PyTorch with `cnngraph verify` (batch 1 and 3, seeded random weights).
# One line per model and precision, smallest models first; exit 1 if any fails. Usage: scripts/verify_zoo.sh [NAME...]
set -u
cd "$(dirname "$0")/.."
CNNGRAPH=${CNNGRAPH:-.venv/bin/cnngraph}
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  mapfile -t names < <($CNNGRAPH zoo | grep -E '^(squeezenet|shufflenet_v2|regnet|convnext)' | tr -d , | sort -n -k2 | awk '{print $1}')
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for name in "${names[@]}"; do
  for precision in fp32 fp16; do
    flag=""; [ "$precision" = fp16 ] && flag="--fp16"
    if $CNNGRAPH export "$name" -o "$out/$name.onnx" $flag >"$out/log" 2>&1 &&
       $CNNGRAPH verify "$out/$name.onnx" --against "$name" >>"$out/log" 2>&1; then
      echo "$name $precision: $(grep -E '^PASS' "$out/log") ($(grep -E '^  batch' "$out/log" | awk '{print "batch " $2 " rel " $8 ";"}' | tr '\n' ' '))"
    else
      echo "$name $precision: FAILED: $(tail -1 "$out/log")"; failed=1
    fi
    rm -f "$out/$name.onnx"*
  done
done
exit $failed
