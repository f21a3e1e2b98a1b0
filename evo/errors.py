"""The one exception type for mistakes a user can cause.

Its message says what is wrong and what to do; the CLI prints it on one line and exits non-zero.
"""


class EvoError(Exception):
    """A user-facing error: bad input, missing file, impossible budget."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name where it has none): for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def failure_reason(exc: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message' (the line cut at `limit`): why a fast path fell back."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"
