"""The one exception type for mistakes a user can fix (bad file, bad option, mismatched checkpoint).

The CLI prints its message on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, named with what to do about it."""
