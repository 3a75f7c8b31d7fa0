"""RQ: `rq worker-pool -n N`, N worker processes each forking a process per job (RQ runs
one job at a time per worker: its concurrency is processes)."""
