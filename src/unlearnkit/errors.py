"""The one exception type for mistakes a user can fix.

The CLI turns it into one sentence on stderr and exit status 2; the Python API lets it propagate.
"""


class UserInputError(ValueError):
    """Bad input from the user: the message is one sentence naming the input and what was expected."""
