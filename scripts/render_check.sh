#!/usr/bin/env bash
# Renders the demo report (fake 4-layer x 8-expert profile + compression run) with headless chromium and
# leaves demo.html / demo.png / demo.dom.html in BUILD/report_render for a person to look at.
# Usage: scripts/render_check.sh [BUILD_DIR]   (default: build). Needs chromium (apt-get install chromium);
# without it the render test is skipped and only the HTML is checked.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
[ -d "$build" ] || cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j2 --target report_test
"$build/report_test"
out="$build/report_render"
if [ -f "$out/demo.png" ]; then
  echo "report: $out/demo.html"
  echo "screenshot (1200x2000, top of page): $out/demo.png"
  echo "for the whole page: chromium --headless --screenshot=full.png --window-size=1200,6400 file://$out/demo.html"
else
  echo "chromium not found: render skipped; HTML at $build/report_test_tmp/demo.html"
fi
