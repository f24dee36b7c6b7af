#!/usr/bin/env bash
# Debian's Chromium for the report-page test (headless, driven through Playwright with this binary;
# Playwright's own browser download is never used). Root installs it; others are told how.
set -euo pipefail
if command -v chromium >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_browser: chromium is missing; run: sudo apt-get install chromium" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
echo "install_browser: $(chromium --version)"
