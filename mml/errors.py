"""The base of every error caused by the user's input (params, data, files), not by a bug."""


class UserError(Exception):
    """Bad input: the CLI prints the message as one paragraph and exits non-zero."""
