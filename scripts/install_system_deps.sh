#!/usr/bin/env bash
# Debian packages MuJoCo's EGL renderer needs on a machine without a GPU (Mesa llvmpipe).
# Installs only what is missing; needs root (or sudo).
set -euo pipefail
pkgs=(libegl1 libegl-mesa0 libgl1-mesa-dri)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "posevla: missing system packages ${missing[*]} (MuJoCo EGL rendering); install them with your package manager" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "posevla: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
