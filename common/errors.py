"""One exception type for problems the user can fix.

The command-line entry points catch `UserError` and print its message as one paragraph without a traceback:
the message itself must name the file, line or value at fault and say what to do next.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input or environment that the user can correct (a bad manifest line, a missing file, ...)."""


def collect(problems: list[str], header: str) -> None:
    """Raise one `UserError` listing every problem found, so the user fixes them all in one go."""
    if problems:
        raise UserError(header + "\n" + "\n".join(f"  - {p}" for p in problems))
