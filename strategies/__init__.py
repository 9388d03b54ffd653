"""Recommendation strategies. Each implements strategies.base.Strategy."""
