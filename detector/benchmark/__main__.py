"""``python -m detector.benchmark SPEC_JSON``: the worker process of an isolated measurement."""
import sys

from .runner import worker_main

sys.exit(worker_main(sys.argv[1:]))
