"""Retry: what a sink could not take now travels as envelopes on the retry queue and is tried
again with backoff; what never can be delivered is dead-lettered with its reason, and replayable."""
