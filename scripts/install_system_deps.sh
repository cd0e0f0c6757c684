#!/usr/bin/env bash
# Debian packages posevla needs outside the venv; installs only what is missing; needs root (or sudo).
# - MuJoCo's EGL renderer on a machine without a GPU (Mesa llvmpipe): libegl1 libegl-mesa0 libgl1-mesa-dri
#   (required).
# - chromium: headless browser for the live plan viewer's screenshot test (tests/test_viewer.py); optional,
#   skipped when a chromium binary is already on PATH; without it that one test is skipped.
set -euo pipefail
pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri)
optional=(chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
missing_optional=()
for p in "${optional[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || command -v "$p" >/dev/null 2>&1 || missing_optional+=("$p")
done
[ $(( ${#missing[@]} + ${#missing_optional[@]} )) -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "posevla: missing system packages ${missing[*]} (MuJoCo EGL rendering); install them with your package manager" >&2
    exit 1
  fi
  echo "posevla: optional ${missing_optional[*]} not installed (headless viewer test is skipped); install it with your package manager" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "posevla: installing ${missing[*]} ${missing_optional[*]}"
# an unreachable package index only matters when a required package is missing
$SUDO apt-get update -qq || [ ${#missing[@]} -eq 0 ]
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if [ ${#missing_optional[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing_optional[@]}" \
    || echo "posevla: could not install optional ${missing_optional[*]} (headless viewer test is skipped)" >&2
fi
