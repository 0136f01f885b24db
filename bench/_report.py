"""How every benchmark prints its result (``callbot bench NAME`` and ``python -m bench.NAME``)."""

from __future__ import annotations

import json
from collections.abc import Mapping


def print_result(result: Mapping[str, float | bool], *, as_json: bool) -> None:
    """One JSON object, or one aligned ``key value`` line per number."""
    if as_json:
        print(json.dumps(dict(result)))
        return
    for key, value in result.items():
        print(f"{key:40s} {float(value):10.3f}")
