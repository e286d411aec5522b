"""The one exception type the CLI turns into a one-line message and exit status 2."""


class RtdiarError(Exception):
    """A problem with the user's input or environment, explained in one line."""
