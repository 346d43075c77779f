"""What a command ends with when it cannot do its work: a user's mistake (UserError: what is wrong and how to fix
it, exit 2), or a failure that is not one (Failure, exit 1); either is one line, never a traceback."""


class UserError(Exception):
    """Bad input from a person or a file. The CLI prints it as one line and exits with status 2."""


class Failure(Exception):
    """Something the command could not do that is not the user's mistake (a lab that could not be built, a
    daemon that would not start): one line naming the cause, exit 1."""
