#!/usr/bin/env bash
# The TypeScript client (clients/typescript): re-dump the OpenAPI document from the app,
# regenerate the types, type-check (tsc --noEmit, with the docs' TypeScript examples), bundle
# the storefront page, and fail when any committed file differs from what was generated.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
start=$(date +%s)
if ! command -v npm >/dev/null 2>&1; then   # Node 18+ and npm (Debian's nodejs and npm)
  echo "ci_client: installing nodejs and npm from Debian's packages"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
"$BIN/python" scripts/dump_openapi.py
"$BIN/python" scripts/doc_examples.py ts --out clients/typescript/build/doc-examples
cd clients/typescript
npm ci --no-audit --no-fund --loglevel=error
npm run --silent generate
npm run --silent typecheck
npm run --silent build:storefront
cd ../..
if ! git diff --exit-code -- clients/typescript ||
   [ -n "$(git status --porcelain --untracked-files=all -- clients/typescript)" ]; then
  echo "ci_client: clients/typescript differs from what the served document generates;" \
       "run scripts/ci_client.sh and commit the result" >&2
  exit 1
fi
echo "ci_client: generated, type-checked and bundled in $(( $(date +%s) - start ))s"
