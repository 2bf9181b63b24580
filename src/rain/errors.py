"""User-facing errors: the CLI prints the message as one line and exits non-zero, no traceback."""


class RainError(Exception):
    """A problem with the user's input (files, config, flags) that they can fix; the message says how."""
