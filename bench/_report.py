"""What every benchmark shares: its command line, how it prints, OpenCV's thread setting."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence

import cv2

Result = Mapping[str, float | bool]


def print_result(result: Result, *, as_json: bool) -> None:
    """One JSON object, or one aligned ``key value`` line per number."""
    if as_json:
        print(json.dumps(dict(result)))
        return
    for key, value in result.items():
        print(f"{key:40s} {float(value):10.3f}")


@contextlib.contextmanager
def cv2_threads(n: int | None) -> Iterator[int]:
    """Run with ``cv2.setNumThreads(n)`` (process-global), restored afterwards; yields the count."""
    previous = cv2.getNumThreads()
    if n is not None:
        cv2.setNumThreads(n)
    try:
        yield cv2.getNumThreads()
    finally:
        cv2.setNumThreads(previous)


def main(
    doc: str | None,
    run: Callable[..., Result],
    argv: Sequence[str] | None = None,
    *,
    frames: int,
    frames_help: str = "samples per measurement",
    with_cv2_threads: bool = False,
) -> int:
    """``python -m bench.NAME [--json] [--frames N] [--cv2-threads N]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--frames", type=int, default=frames, help=frames_help)
    if with_cv2_threads:
        parser.add_argument("--cv2-threads", type=int, default=None, help="cv2.setNumThreads")
    args = parser.parse_args(argv)
    extra = (args.cv2_threads,) if with_cv2_threads else ()
    print_result(run(args.frames, *extra), as_json=args.json)
    return 0
