"""Blueprints: the only bridge package (with bridges.local) that imports azure.functions.

Each trigger is thin: take the host's request apart, call the core, answer.
"""
