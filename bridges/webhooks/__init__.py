"""Webhooks: any JSON a third party posts, checked for authenticity and duplicates, then mapped by rule files into metrics for ingest."""
