"""The one exception type for mistakes a user can fix; the CLI prints it without a traceback."""


class KvfpError(Exception):
    """A user-facing error: bad input, unknown name, refused overwrite.

    ``exit_code`` follows the CLI convention: 2 for a bad name or argument, 1 for anything else.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UnknownNameError(KvfpError):
    """An unknown model or scheme name; the message lists what is valid."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)
