#!/usr/bin/env bash
# Installs moec's build and test dependencies from Debian packages (Debian 12 "bookworm" or newer).
# python3-torch/numpy: the independent reference evaluator in ../shared/tools (tests skip without it);
# chromium: renders the HTML reports in a test; nodejs/npm: llama.cpp (node-llama-cpp) GGUF checks.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libeigen3-dev libopenblas-dev liblapacke-dev libhdf5-dev hdf5-tools
      libboost-program-options-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
      python3-torch python3-numpy chromium)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then echo "moec: all dependencies present"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "moec: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
