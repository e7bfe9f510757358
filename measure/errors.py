"""One-line error messages: what a recorder keeps when a sample, role, request or run fails.

Tracebacks of worker processes and threads do not survive the trip to the parent; the trace
keeps ``Type: first line of the message`` in its ``error`` column and the run goes on.
"""
from __future__ import annotations


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of the message; the exception's type name when it has none."""
    lines = str(exc).strip().splitlines()
    if lines:
        return lines[0].strip()
    return type(exc).__name__ if isinstance(exc, BaseException) else ""


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception (``Type`` alone when the message is empty)."""
    msg = first_line(exc)
    return type(exc).__name__ if msg == type(exc).__name__ else f"{type(exc).__name__}: {msg}"
