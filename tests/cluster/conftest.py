"""The multi-host test bed (services/devstack/netns.py): hosts as network namespaces.

It needs Linux and root. Elsewhere its tests are skipped, with the reason; under CI=1
(CI runs as root) they fail instead, so the bed is never silently left untested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from services.devstack.netns import Bed, unavailable_reason

# One host per component, two worker hosts: what the scenarios need.
BED_HOSTS = ["redis", "api", "w1", "w2"]
BED_PREFIX = "jrt"


def require_bed() -> None:
    """Skip (fail under CI) where a bed cannot be built."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the multi-host test bed: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    require_bed()
    with Bed(prefix=BED_PREFIX, hosts=BED_HOSTS) as built:
        yield built
