#!/usr/bin/env bash
# Install what the tests need on a fresh Debian/Ubuntu machine (the README's test command then runs
# pytest). Idempotent: apt packages are installed only when missing; torch is the CPU build pinned here.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
for lib in libxcb-icccm4 libxcb-keysyms1 libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libdbus-1-3 libfontconfig1; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[testing,all]"
