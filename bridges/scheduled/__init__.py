"""Scheduled inputs: synthetic checks and polled sources that the timer functions run, and the schedules they run on."""
