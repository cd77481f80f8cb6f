"""Ingest: what arrives (canonical JSON, vendor formats, rule output) becomes validated canonical metrics."""
