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


class Interrupted(BaseException):
    """Ctrl+C outside the training loop (model loading, a validation pass): stop without a traceback.

    A BaseException like KeyboardInterrupt, so no `except Exception` swallows it, but not a KeyboardInterrupt,
    which Lightning turns into `exit(1)` after its own shutdown message.
    """


class NonFiniteLoss(Exception):
    """The training loss (or a weight about to be saved) stopped being finite: training stops at that step."""

    def __init__(self, step: int, value: float, what: str = "loss"):
        super().__init__(f"non-finite {what} ({value}) at step {step}")
        self.step, self.value, self.what = step, value, what
