"""Stock Celery: `bench/stock_celery.py` (Celery's defaults, JSON, the Redis result
backend), run by jobrunner's own environment (the same Celery jobrunner is built on)."""
