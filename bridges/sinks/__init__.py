"""Sinks: where accepted metrics go. One module per backend."""
