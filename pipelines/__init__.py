"""Thin stage entry points: ``python -m pipelines.<stage> key=value ...``."""
