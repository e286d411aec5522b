#!/usr/bin/env bash
# Sets rtdiar up on a fresh Debian/Ubuntu machine: system packages, a virtual environment in .venv,
# CPU PyTorch, rtdiar itself (editable, with test tools), and OpenCV's headless build.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(ffmpeg libportaudio2 libgl1 libglib2.0-0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
              libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0
              libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first, so the package's range is already satisfied and no CUDA build is pulled in
.venv/bin/python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
# mediapipe pulls OpenCV's GUI build, whose bundled Qt plugins clash with PyQt5: keep only the headless one
cv_version=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('opencv-contrib-python-headless'))")
if .venv/bin/python -m pip show -q opencv-contrib-python >/dev/null 2>&1; then
  pip uninstall -q -y opencv-contrib-python opencv-contrib-python-headless
  pip install -q --no-deps "opencv-contrib-python-headless==${cv_version}"
fi
.venv/bin/python -c "import cv2, mediapipe, torch, PyQt5, rtdiar; print('rtdiar ready: torch', torch.__version__, '| opencv', cv2.__version__)"
# LR-ASD's active-speaker weights (MIT, 3.4 MB) are optional: offline, or on any failure, say so in one line and carry on
if ! timeout -s INT -k 5 20 .venv/bin/rtdiar weights download lrasd-ava 2>/dev/null; then
  echo "rtdiar: lrasd-ava not downloaded (offline?): rtdiar-pair runs; later, rtdiar weights download lrasd-ava makes rtdiar-lrasd the default"
fi
