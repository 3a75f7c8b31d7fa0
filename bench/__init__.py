"""Benchmarks: jobrunner against stock Celery (and Flower), measured in the same run."""
