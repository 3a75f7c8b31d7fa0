"""The one error a workload raises to say its input is refused, in words a client may see."""


class WorkloadError(Exception):
    """A workload refused or failed its input; its message is safe to show a client."""
