#!/usr/bin/env bash
# Render a petfeat HTML report in headless Chromium (Debian package 'chromium') and save full-page screenshots:
# the screen layout at 1400 px and the print layout (A4 PDF, each page rasterised when pdftoppm is present,
# else a screenshot at A4 width, 794 px).
# Usage: scripts/check_report.sh REPORT.html [OUT_PREFIX]  -> OUT_PREFIX-1400.png, OUT_PREFIX-print.pdf and
#        OUT_PREFIX-print.png (the A4 pages side by side; pdftoppm, Debian package poppler-utils) or
#        OUT_PREFIX-794.png.
# REPORT_HEIGHT (default 16000) is the window height in px: the screenshot is cut to the page's end.
set -euo pipefail
report=$(realpath "$1"); prefix=${2:-${report%.html}}
command -v chromium >/dev/null || { echo "chromium is not installed: apt-get update && apt-get install -y chromium" >&2
                                    exit 2; }
profile=$(mktemp -d); trap 'rm -rf "$profile"' EXIT
chrome() {
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" "$@" 2>/dev/null
}
shot() {  # width, height, output
  chrome --window-size="$1,$2" --virtual-time-budget=3000 --screenshot="$3" "file://$report"
  # cut the blank rows below the page's end
  python3 -c "import sys; from PIL import Image, ImageChops
im = Image.open(sys.argv[1]).convert('RGB'); box = ImageChops.invert(im).getbbox()
im.crop((0, 0, im.width, min(im.height, box[3] + 24) if box else im.height)).save(sys.argv[1], optimize=True)" "$3"
  test -s "$3" && echo "screenshot: $3 (width $1)"
}
rows=${REPORT_HEIGHT:-16000}
shot 1400 "$rows" "$prefix-1400.png"
chrome --print-to-pdf="$prefix-print.pdf" --no-pdf-header-footer "file://$report"
test -s "$prefix-print.pdf" && echo "print: $prefix-print.pdf"
if command -v pdftoppm >/dev/null; then
  pdftoppm -png -r 72 "$prefix-print.pdf" "$prefix-print"
  # the pages side by side in rows of four, as one image
  python3 -c "import sys; from PIL import Image
pages = [Image.open(p).convert('RGB') for p in sys.argv[2:]]; w, h = pages[0].size; cols = min(4, len(pages))
sheet = Image.new('RGB', (cols * (w + 12) + 12, -(-len(pages) // cols) * (h + 12) + 12), (160, 160, 160))
for i, p in enumerate(pages): sheet.paste(p, (12 + (i % cols) * (w + 12), 12 + (i // cols) * (h + 12)))
sheet.save(sys.argv[1], optimize=True)" "$prefix-print.png" $(ls "$prefix"-print-*.png | sort -V)
  rm -f "$prefix"-print-*.png
  echo "print pages: $prefix-print.png"
else
  shot 794 "$((rows * 2))" "$prefix-794.png"
fi
