"""Celery and its Redis transport: the app's configuration, the transport and its
unacknowledged-message bookkeeping, the job messages, and which workers are alive."""
