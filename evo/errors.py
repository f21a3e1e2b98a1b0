"""The one exception type for mistakes a user can cause.

Its message says what is wrong and what to do; the CLI prints it on one line and exits non-zero.
"""


class EvoError(Exception):
    """A user-facing error: bad input, missing file, impossible budget."""
