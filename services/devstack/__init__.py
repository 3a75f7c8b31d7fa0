"""Running jobrunner on this machine without Docker: a private redis-server, the one
launcher of every process, and `make run`."""
