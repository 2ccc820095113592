"""The exceptions loratk raises for problems a user can fix.

Each carries a message that names the bad value and a hint that says what to do next. The CLI
turns them into one line on stderr (plus the hint) and an exit code; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations


class LoratkError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LoratkError):
    """Bad options or arguments (exit code 2, like click's own usage errors)."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in a configuration, all reported at once."""

    def __init__(self, problems: list[str], source: str = "configuration", hint: str | None = None):
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            listed = "; ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
            message = f"{source} has {len(self.problems)} problems: {listed}"
        super().__init__(message, hint)


class DataError(LoratkError):
    """The dataset cannot be read or does not have what training needs."""


class ModelError(LoratkError):
    """The model cannot be found, loaded or adapted."""


class PluginError(LoratkError):
    """A plugin is broken or two plugins claim the same name."""


class Interrupted(LoratkError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (exit code 130 or 143)."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 130):
        super().__init__(message, hint)
        self.exit_code = exit_code
