"""Jobs: the record and its store in Redis, submission (the one way in), idempotency, and
the reconciler that re-sends what was lost."""
