"""The few error types a user can cause; the UI maps them to gr.Error, the CLI to exit codes."""

from __future__ import annotations


class StudioError(Exception):
    """An error with a message meant for the artist, optionally naming the field at fault."""

    exit_code = 1

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        self.message = message  # without the field, for re-raising under a more precise one
        super().__init__(f"{field}: {message}" if field else message)


class InputError(StudioError):
    """A request value is out of range or malformed; nothing was run or recorded."""

    exit_code = 2


class ModelError(StudioError):
    """A model is missing, corrupt, unsafe to load or cannot run the requested mode."""

    exit_code = 3


class NotFound(StudioError):
    """A run, model or file that was asked for does not exist."""

    exit_code = 4


class HistoryError(StudioError):
    """The history database or one of its files is damaged, full or unreachable; nothing was changed."""

    exit_code = 5
