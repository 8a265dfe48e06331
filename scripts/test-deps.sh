#!/usr/bin/env bash
# Install and start what the test suite needs that pip cannot provide: DCMTK (the rendering
# oracle), poppler-utils (pdftoppm/pdftotext/pdffonts: the PDF report read back), libpng-tools
# (pngfix: libpng checks the PNG writer) and a Redis server
# on 127.0.0.1:6379 if none answers. Idempotent; quiet when all is there.
set -euo pipefail
need=()
command -v dcmj2pnm >/dev/null || need+=(dcmtk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v pdftoppm >/dev/null || need+=(poppler-utils)
command -v pngfix >/dev/null || need+=(libpng-tools)  # libpng's own check of our PNG writer
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]}: install with 'sudo apt-get install -y ${need[*]}'" >&2
    exit 1
  fi
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
