"""Errors a user can cause and fix; the CLI prints them without a traceback."""


class UserError(Exception):
    """Bad input or setup. The message names the file or key and says how to fix it."""
