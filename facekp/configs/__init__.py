"""Experiment configs: small Python files that start from default.py and override a few fields.

They ship with facekp, so `--config=NAME` (tiny, few_faces, ...) names one from any folder, the
installed package's as well as a checkout's. A config of your own is a file anywhere, given by
its path: `from facekp.configs import tiny` (or default), then change fields in get_config().
"""
