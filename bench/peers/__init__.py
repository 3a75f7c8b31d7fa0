"""jobrunner beside the other Python job queues (issue 13): Huey, Dramatiq, Taskiq, arq,
RQ and stock Celery, each in its own virtual environment and with its own Redis.

Each peer is a folder here: `tasks.py`, the jobs its worker imports, and `producer.py`,
the process that sends them and reads their results back, both run by that peer's own
interpreter (`venvs.py` makes it). `driver.py` is what every producer shares: it speaks
to the bench over stdin and stdout and does the timing, the waiting and the checking.
Nothing in this package's `__init__` may import anything: the peers' interpreters import
it too, and they have only their own library and redis-py.
"""
