"""Webhook-to-metrics bridge for Azure Functions: the core, free of azure.functions."""

__version__ = "0.1.0"
