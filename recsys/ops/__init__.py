"""Cross-cutting operations support that any layer may use: Prometheus metrics, structured logs
and request ids, the audit log, background polling, post-fork lifecycle hooks and the gunicorn
worker class."""
