"""HTTP API: one blueprint per concern."""
