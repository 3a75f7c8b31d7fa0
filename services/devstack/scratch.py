"""A folder of its own for one run of a private stack (Redis's files, the processes' logs)
that goes once the run has worked: `jobrunner compare --scale` and `bench/pool_run.py`
each start stacks again and again, and kept folders piled up in /tmp."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A new folder under $TMPDIR whose name starts with `prefix`, deleted when the block
    ends normally; kept when it raises, and named on stderr, to read what went wrong."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    except BaseException:
        print(f"logs in {folder}", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
