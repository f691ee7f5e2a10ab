#!/bin/sh
# Installs node-llama-cpp 3.22.1 (llama.cpp for Node) with its prebuilt CPU binary into DIR, without any
# download or build step of its own: only the npm registry is used. GPU variants (CUDA, Vulkan: ~600 MB)
# are left out. Afterwards: NODE_PATH=DIR/node_modules node scripts/llama/llama_ppl.mjs ...
# Usage: scripts/llama/install.sh DIR
set -eu
if [ $# -ne 1 ]; then echo "usage: $0 DIR" >&2; exit 2; fi
dir=$1
version=3.22.1
command -v npm >/dev/null 2>&1 || { echo "install.sh: npm not found" >&2; exit 3; }
platform=$(node -p 'process.platform + "-" + process.arch')
mkdir -p "$dir"
# Test executables may run in parallel (ctest -j): one npm install at a time into DIR.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/.install.lock"
  flock 9
fi
if [ -f "$dir/node_modules/node-llama-cpp/package.json" ] &&
   [ -d "$dir/node_modules/@node-llama-cpp/$platform/bins" ] &&
   grep -q "\"version\": \"$version\"" "$dir/node_modules/node-llama-cpp/package.json"; then
  exit 0  # already there
fi
NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm install --prefix "$dir" --omit=optional --no-audit --no-fund \
  --save-exact "node-llama-cpp@$version" "@node-llama-cpp/$platform@$version"
