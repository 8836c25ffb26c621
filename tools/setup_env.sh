#!/usr/bin/env bash
# One-command environment setup for mmlckd (idempotent).
#
#   bash tools/setup_env.sh          # prints the python to use on its last line
#
# What it does, in order (each step is skipped when already satisfied):
#   1. picks a Python environment: the active virtualenv/conda env if any, else
#      $MMLCKD_VENV (default: <repo>/.venv), created on first run. If the base
#      python already has torch (e.g. a CUDA build on a GPU box) the new venv
#      sees it through --system-site-packages, so that torch is kept.
#   2. torch: kept when importable. Otherwise torch==2.13.0, chosen by
#      tools/torch_install_plan.py (run it with -h for the details); this script
#      names no package index, every index comes from you:
#      - no NVIDIA GPU and a torch-2.13.0+cpu wheel for this python in pip's
#        find-links (PIP_FIND_LINKS or pip.conf find-links): that wheel;
#      - MMLCKD_TORCH_INDEX_URL set (e.g. the CPU index URL from PyTorch's install
#        selector): pip install torch==2.13.0 --index-url "$MMLCKD_TORCH_INDEX_URL",
#        pip's own configured indexes kept as extra indexes for the dependencies;
#      - NVIDIA GPU: torch==2.13.0 (CUDA build) from pip's configured/default index;
#      - no GPU, pip has an index configured (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
#        pip.conf index-url/extra-index-url): torch==2.13.0 with pip's config;
#      - no GPU and none of these: pip's default index may bring the multi-GB
#        CUDA build, so setup STOPS and says how to fix it (set
#        MMLCKD_TORCH_INDEX_URL, add a CPU wheel to find-links, or set
#        MMLCKD_ALLOW_DEFAULT_TORCH=1 to install from pip's default index anyway).
#   3. mmcv 2.1.0 with ops, built from source once (MMCV_WITH_OPS=1,
#      --no-build-isolation, setuptools<70 for the build only) into a wheel
#      cache keyed by the python and torch versions (~/.cache/mmlckd/wheels),
#      then installed from it; then the runtime's setuptools (>=77.0.3 for
#      torch 2.13, <81 for mmengine's pkg_resources), so `pip check` is clean.
#   4. mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2, pytest and mmlckd (-e)
#      (the pins of requirements/*.txt, OpenMMLab's layout).
#
# First run on a 2-core CPU machine: ~15-20 min (the mmcv build dominates).
# Later runs: a few seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MMLCKD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmlckd}"
log() { echo "[mmlckd setup] $*" >&2; }

# ---------------------------------------------------------------- 1. python
if [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [[ -n "${CONDA_PREFIX:-}" && -x "${CONDA_PREFIX}/bin/python" ]]; then
  PY="$CONDA_PREFIX/bin/python"
else
  VENV="${MMLCKD_VENV:-$REPO/.venv}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    BASE_PY="${PYTHON:-python3}"
    if "$BASE_PY" -c "import torch" >/dev/null 2>&1; then
      log "creating $VENV (sees the base python's torch)"
      "$BASE_PY" -m venv --system-site-packages "$VENV"
    else
      log "creating $VENV"
      "$BASE_PY" -m venv "$VENV"
    fi
  fi
  PY="$VENV/bin/python"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# Fast path: everything importable at the pinned versions -> done in ~2 s.
if "$PY" - <<'PYEOF' >/dev/null 2>&1
import importlib.metadata as md, sys
want = {"mmengine": "0.10.7", "mmcv": "2.1.0", "mmdet": "3.3.0",
        "mmsegmentation": "1.2.2"}
for k, v in want.items():
    assert md.version(k) == v, k
import torch, pytest, mmcv.ops, mmlckd  # noqa: F401
from mmcv.ops import nms  # noqa: F401  (ops compiled)
PYEOF
then
  # make sure the editable install points at *this* checkout
  if "$PY" -c "import mmlckd,os,sys; sys.exit(0 if os.path.realpath(os.path.dirname(mmlckd.__file__))==os.path.realpath('$REPO/mmlckd') else 1)" 2>/dev/null; then
    log "environment ready ($PY)"
    echo "$PY"
    exit 0
  fi
fi

# ---------------------------------------------------------------- 2. torch
if "$PY" -c "import torch" >/dev/null 2>&1; then
  log "keeping installed torch $("$PY" -c 'import torch;print(torch.__version__)')"
else
  TORCH_VER=2.13.0
  GPU=()
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    GPU=(--gpu)
  fi
  PIP_CONFIG="$("${PIP[@]}" config list 2>/dev/null || true)"
  # prints the pip install arguments, one a line; exits non-zero (with the
  # reason and the fixes on stderr) when it refuses
  if ! PLAN="$("$PY" "$REPO/tools/torch_install_plan.py" --torch-version "$TORCH_VER" \
                 ${GPU[@]+"${GPU[@]}"} --pip-config="$PIP_CONFIG")"; then
    log "torch not installed; see the message above"
    exit 1
  fi
  TORCH_ARGS=()
  while IFS= read -r a; do
    if [[ -n "$a" ]]; then TORCH_ARGS+=("$a"); fi
  done <<<"$PLAN"
  "${PIP[@]}" install "${TORCH_ARGS[@]}"
fi

# ------------------------------------------------ 3. build deps + mmcv (ops)
# numpy<2 and opencv<4.12: mmcv 2.1 / mmdet 3.3 / mmseg 1.2 predate numpy 2.
"${PIP[@]}" install -q wheel ninja "numpy<2" "opencv-python<4.12"
"${PIP[@]}" install -q "mmengine==0.10.7"

if ! "$PY" -c "import importlib.metadata as m,sys; sys.exit(m.version('mmcv')!='2.1.0')" 2>/dev/null \
   || ! "$PY" -c "from mmcv.ops import nms" >/dev/null 2>&1; then
  TAG=$("$PY" -c "import sys,torch;print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
  WHEELDIR="$CACHE/wheels/$TAG"
  mkdir -p "$WHEELDIR"
  if ! ls "$WHEELDIR"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    log "building mmcv 2.1.0 with ops from source (one time, ~6-13 min on 2 cores) -> $WHEELDIR"
    start=$(date +%s)
    # mmcv 2.1's setup.py needs pkg_resources of setuptools<70: the build only
    "${PIP[@]}" install -q "setuptools<70"
    MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary mmcv "mmcv==2.1.0" -w "$WHEELDIR"
    log "mmcv build took $(( $(date +%s) - start )) s"
  fi
  "${PIP[@]}" install -q "$(ls "$WHEELDIR"/mmcv-2.1.0-*.whl | head -n1)"
fi
# the runtime's setuptools (requirements/runtime.txt): torch 2.13 requires
# >=77.0.3; mmengine 0.10.7 imports pkg_resources, gone in setuptools 81
"${PIP[@]}" install -q "setuptools>=77.0.3,<81"

# ------------------------------------------------------------- 4. the rest
"${PIP[@]}" install -q "mmdet==3.3.0" "mmsegmentation==1.2.2" pytest matplotlib \
  ftfy regex tensorboard
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$REPO"
log "environment ready ($PY)"
echo "$PY"
