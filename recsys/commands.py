"""Registers the CLI subcommands that live in other modules."""

from __future__ import annotations
