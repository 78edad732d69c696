#!/usr/bin/env bash
# Screenshot of a run's eval/report.html (docs/report.png in the README) with headless Chromium.
# Not part of `make test`. Needs Debian's chromium (apt-get install chromium).
# Usage: docs/tools/report_screenshot.sh runs/demo docs/report.png [WIDTHxHEIGHT]
set -euo pipefail
run_dir=${1:?usage: docs/tools/report_screenshot.sh RUN_DIR OUT.png [WIDTHxHEIGHT]}
out=${2:?usage: docs/tools/report_screenshot.sh RUN_DIR OUT.png [WIDTHxHEIGHT]}
size=${3:-1000x1250}
report="$(cd "$run_dir" && pwd)/eval/report.html"
[ -f "$report" ] || { echo "no $report: run the benchmark (or axbench eval report $run_dir) first" >&2; exit 1; }
"${CHROMIUM:-chromium}" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="${size/x/,}" \
  --screenshot="$(realpath -m "$out")" "file://$report" 2>/dev/null
echo "wrote $out"
