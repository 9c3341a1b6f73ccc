"""The one exception type for mistakes a user can fix (bad file, bad option, mismatched checkpoint).

The CLI prints its message on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, named with what to do about it."""


def unreadable(path: object, error: BaseException, what: str,
               remedy: str = "copy or download it again") -> UserError:
    """The one-line error for a weights file that exists but cannot be read: truncated by an interrupted copy or
    a full disk, or not the format its name says. `what` names the format ("safetensors file", ...)."""
    return UserError(f"{path}: not a readable {what} ({first_line(error)}); the file may be truncated or corrupt: "
                     f"{remedy}")


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (orbax wraps tensorstore's OUT_OF_RANGE / DATA_LOSS errors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error
