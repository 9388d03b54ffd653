#!/usr/bin/env bash
# The docs site (mkdocs.yml, docs/): built offline with warnings as errors, so a broken link,
# a missing page or a stale snippet fails CI. Also checks that the generated pages are current
# (the HTTP reference's OpenAPI document, the configuration reference).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
export NO_MKDOCS_2_WARNING=1
start=$(date +%s)
"$BIN/python" scripts/dump_openapi.py --check
"$BIN/python" scripts/gen_config_docs.py --check
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$BIN/mkdocs" build --strict --site-dir "$out/site"
echo "ci_docs: site built in $(( $(date +%s) - start ))s"
