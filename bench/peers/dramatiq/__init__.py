"""Dramatiq: one worker process of threads (`dramatiq -p 1 -t N`), the Redis broker and
the Results middleware's Redis backend."""
