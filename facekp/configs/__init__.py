"""Experiment configs: small Python files that import default.py and override a few fields."""
