#!/usr/bin/env bash
# Install Debian's chromium (used by tests/test_report.py to render report.html) when it is missing.
# Does nothing when `chromium` is already on PATH. Runs apt-get directly as root, through sudo otherwise.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "ensure-chromium: chromium is missing and installing it needs root (or sudo)." >&2
    exit 1
fi

echo "ensure-chromium: installing Debian's chromium for the report rendering test (about 2-3 minutes)..."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "ensure-chromium: apt-get failed to install chromium." >&2
    exit 1
fi
command -v chromium >/dev/null 2>&1 || { echo "ensure-chromium: chromium is still not on PATH after installing." >&2; exit 1; }
echo "ensure-chromium: $(chromium --version 2>/dev/null | head -n 1)"
