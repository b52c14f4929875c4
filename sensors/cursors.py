"""The delivery sensors' cursors: JSON objects, read back with a clear skip when one is broken."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


class CursorError(ValueError):
    """A cursor that is not what the sensor writes; the message says what to do."""


def read_json_cursor(text: str | None, *, valid: Callable[[Any], bool], shape: str) -> dict:
    """The cursor as a dict ({} when there is none yet). `valid(value)` checks each value; `shape`
    is what the cursor should look like, for the error."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CursorError(f"the cursor is not JSON ({exc}); reset it in the UI") from None
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and valid(value) for key, value in data.items()
    ):
        raise CursorError(f"the cursor is not {shape}; reset it in the UI")
    return data
