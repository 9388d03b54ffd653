#!/usr/bin/env bash
# CI: the Prometheus alert rules load and fire as intended (deploy/prometheus, docs/runbooks.md):
# `promtool check rules` and the unit tests in alerts.test.yml. promtool comes from Debian's
# `prometheus` package, installed here when missing. (tests/ops/test_deploy.py checks the metric
# names the rules and the Grafana dashboard use against a running app's /metrics.)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null; then
    echo "ci_alerts: installing promtool (Debian package prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
