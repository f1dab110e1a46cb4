"""The one exception type for a user's mistake: the CLI prints its message on one line and exits non-zero."""


class UserError(ValueError):
    """Bad input from a user (a name, a path, a file, a size). The message names the problem and the fix."""

    exit_code = 2
