"""notifier's benchmark: Celery's no-op baseline against notifier end to end.

Run it with ``python -m bench`` (``bench/run.py``; bench/README.md).
"""
