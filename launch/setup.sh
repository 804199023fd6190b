#!/usr/bin/env bash
# Installs what mptrain needs from Debian packages (idempotent: installs only what is missing) and
# checks for the CUDA toolkit, which is not a Debian package here and must already be installed.
set -euo pipefail
PKGS=(build-essential cmake openmpi-bin libopenmpi-dev nlohmann-json3-dev libgtest-dev googletest
      zlib1g-dev dataset-fashion-mnist fortunes python3 python3-matplotlib)
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
