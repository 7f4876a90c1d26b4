"""Errors a user can cause and fix; the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input or setup. The message names the file or key and says how to fix it."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way takes it for an error and carries on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
