#!/usr/bin/env bash
# The prepared device check (run through the `device` tool on a lent GPU; see README "Measured").
# Needs target/release/plumb and target/release/examples/device_check built beforehand, and the
# Vulkan loader packages in .gl/. Writes its logs under $OUT.
set -o pipefail
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
B=target/release
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$B/plumb info 2>&1 | tee -a "$OUT/gpu.txt"
echo "== HF / PEFT compatibility, both kernel variants"
$B/examples/device_check /tmp/dc 2>&1 | tail -4
python3 tools/device/check_hf.py /tmp/dc 2>&1 | tee "$OUT/hf.txt"
echo "== bench, default kernels"
timeout 150 $B/plumb bench all 2>&1 | tee "$OUT/bench.txt"
echo "== bench, register kernels"
PLUMB_KERNELS=register timeout 60 $B/plumb bench w1 w2 2>&1 | tee -a "$OUT/bench.txt"
echo "== demo"
timeout "${DEMO_S:-150}" $B/plumb demo --out /tmp/demo > "$OUT/demo.txt" 2>&1; echo "demo exit $?"
tail -40 "$OUT/demo.txt"
