"""arq: one asyncio worker process (`arq.worker.run_worker`), Redis for queue and results."""
