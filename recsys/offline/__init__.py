"""Work that never runs on a request's time: importers, training, evaluation and tuning. Serving
code never imports this package (an import-linter contract)."""
