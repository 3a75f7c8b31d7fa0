"""Huey: a thread-pool consumer (`huey_consumer -k thread`), Redis for queue and results."""
