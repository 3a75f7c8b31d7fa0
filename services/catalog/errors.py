"""The one error a workload raises to say its input is refused, in words a client may see."""


class WorkloadError(Exception):
    """A workload refused or failed its input; its message is safe to show a client.

    Raised by a workload's `policy` at submission, it is a 422 on `params.<field>`
    (`field` unset: on `params` as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
