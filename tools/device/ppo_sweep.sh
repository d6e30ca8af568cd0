#!/usr/bin/env bash
# PPO settings sweep for the demo on the lent GPU: one line per run (PPO's and DPO's judge
# gain over SFT). Run through the `device` tool with target/release/plumb and .gl carried; the
# results are quoted in README ("The two commands") and at `DemoConfig::default`.
for f in .gl/*.deb; do dpkg -x "$f" / >/dev/null 2>&1; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
run() { # kernels seed lr kl
  out=$(PLUMB_KERNELS=$1 timeout 60 target/release/plumb demo --seed $2 --ppo-lr $3 --kl-coef $4 --out /tmp/sw 2>/dev/null | grep -E "^- (PPO|DPO \(human)")
  echo "$1 seed $2 lr $3 kl $4 :: $(echo "$out" | sed 's/judge score //; s/ against SFT//; s/ above SFT//; s/(clear margin 0.05)//; s/, below the clear margin 0.05: it did not clearly work this time././' | tr '\n' ' ')"
}
for s in 0 1 2; do for cfg in "5e-5 0.2" "1e-4 0.2" "5e-5 0.1" "1e-4 0.1"; do run tiled $s $cfg; done; done
for cfg in "5e-5 0.2" "1e-4 0.2" "5e-5 0.1" "1e-4 0.1"; do run register 0 $cfg; done
