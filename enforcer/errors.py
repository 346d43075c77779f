"""The one exception a user mistake becomes: a message that says what is wrong and how to fix it."""


class UserError(Exception):
    """Bad input from a person or a file. The CLI prints it as one line and exits with status 2."""
