"""Command-line tools: dataset creation and benchmarks (run as `python -m tools.<name>`)."""
import os

# The real aligned faces beside the project (never committed); benchmarks fall back when absent.
SHARED_FACES = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "shared", "data",
    "aligned128"))
