"""`make chaos`: a soak of the whole stack under faults, and the invariants after it.

Jobs of every pool are submitted at a steady rate (load.py) while faults strike at
random, one at a time (faults.py): a worker of each pool killed while it runs jobs, a
prefork pool process running one, the API, Redis (killed and started again) and, on the
multi-host test bed, a worker host's link. Then the soak waits for every job to end and
checks (invariants.py) that every 202 reached a final state, no job has two recorded
outcomes (read back from Redis's append-only file: aof.py), attempts add up, and no
process was left behind (leaks.py). engine.py runs it; report.py prints it.
"""
