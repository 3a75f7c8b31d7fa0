"""Taskiq: one asyncio worker process (`taskiq worker --workers 1`), taskiq-redis's
stream broker and its Redis result backend."""
