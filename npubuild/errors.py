"""The one error type the build reports to users: a single line, no traceback."""


class BuildError(Exception):
    """A problem with the user's input or environment, stated in one line.

    The message names the file (or field) and what is wrong with it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class OverBudget(BuildError):
    """The models do not fit a target's memory budget (`invoke report` warns; `--check` fails)."""
