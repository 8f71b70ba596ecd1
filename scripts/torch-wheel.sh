#!/usr/bin/env bash
# LibTorch 2.x from PyPI's `torch` wheel (the CUDA build; it also runs on a
# machine without a GPU), in a Python virtual environment of its own, with
# scikit-learn and torchmetrics (the metric tests' references):
# downloaded once (about 4.7 GB on disk, 1-3 minutes on a fast link), reused
# after that. The pinned version is the GPU machines' PyTorch.
#   bash scripts/torch-wheel.sh            # prints the venv's python
#   CAIRN_TORCH_VERSION=2.12.0 bash scripts/torch-wheel.sh
# The venv lives in ${CAIRN_TORCH_HOME:-$HOME/.cache/cairn}/torch-<version>.
# Build against it (scripts/check-build.sh torch2 does this):
#   cmake -S . -B build-torch2 -DCMAKE_PREFIX_PATH="$(PY -c 'import torch;print(torch.utils.cmake_prefix_path)')"
set -euo pipefail
version="${CAIRN_TORCH_VERSION:-2.11.0}"
home="${CAIRN_TORCH_HOME:-${HOME:-/root}/.cache/cairn}"
venv="$home/torch-$version"
py="$venv/bin/python"

have() { [ -x "$py" ] && "$py" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; }
# The references the metric tests compare with (scikit-learn, torchmetrics).
have_references() { "$py" -c "import sklearn, torchmetrics" 2>/dev/null; }
if ! have; then
  echo "cairn: installing torch==$version from PyPI into $venv (about 4.7 GB)" >&2
  start=$(date +%s)
  mkdir -p "$home"
  rm -rf "$venv"
  # The image's python3, else Debian's (which needs python3-venv for a venv).
  base=$(command -v python3 || true)
  if [ -z "$base" ] || ! "$base" -m venv --help >/dev/null 2>&1 || ! "$base" -c 'import ensurepip' 2>/dev/null; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null
    base=/usr/bin/python3
  fi
  "$base" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir "torch==$version" numpy >&2
  have || { echo "cairn: torch==$version did not install into $venv" >&2; exit 1; }
  echo "cairn: torch $version installed in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1) on disk" >&2
fi
if ! have_references; then
  echo "cairn: installing scikit-learn and torchmetrics into $venv (the metric tests' references)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --no-cache-dir scikit-learn torchmetrics >&2
  have_references || { echo "cairn: scikit-learn or torchmetrics did not install into $venv" >&2; exit 1; }
  have || { echo "cairn: installing the references changed torch in $venv" >&2; exit 1; }
fi
echo "$py"
