"""Command-line tools: dataset creation and benchmarks (run as `python -m tools.<name>`)."""
