"""Delivery: accepted metrics wait on the delivery queue, then fan out to every enabled sink over one HTTP transport."""
