"""HTTP adapters: the Flask blueprints (``api``), the WSGI fast path, the operator console, and
what every request passes through on the way in and out (limits, CORS, auth, errors, schemas,
OpenAPI, HTTP caching). Adapters parse and answer; the work is done by ``recsys.serving``."""
