#!/usr/bin/env bash
# Make sure headless Chromium and its WebDriver are installed (Debian's chromium and
# chromium-driver) for tests/web/test_browser.py; installs them if missing (needs root, as on CI).
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
echo "ensure_browser: installing chromium and chromium-driver from Debian's packages"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null || { echo "ensure_browser: chromedriver missing" >&2; exit 1; }
