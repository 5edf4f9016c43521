#!/usr/bin/env bash
# Render a petfeat HTML report in headless Chromium (Debian package 'chromium') and save a screenshot.
# Usage: scripts/check_report.sh REPORT.html [OUT.png]
set -euo pipefail
report=$(realpath "$1"); out=${2:-${report%.html}.png}
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get install -y chromium" >&2; exit 2; }
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1200,3400 \
  --screenshot="$out" "file://$report" 2>/dev/null
rm -rf "$profile"
test -s "$out" && echo "screenshot: $out"
