"""Integers as JSON Schema has them: `1.0` is an integer there (a number with no
fraction), so a client generated from the OpenAPI document may send it.

    count: Annotated[int, Field(ge=1, strict=True), WHOLE_FLOATS_AS_INT]

Strict otherwise: `true`, `"1"` and `1.5` are still refused. The marker goes after the
Field, so that the bounds stay in the JSON schema as minimum and maximum.
"""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator


def _whole_float_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WHOLE_FLOATS_AS_INT = BeforeValidator(_whole_float_to_int)
