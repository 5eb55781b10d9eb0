"""Typed errors with a message written for the person running Headtune.

There is one path for errors to reach a user: raise a ``HeadtuneError`` subclass whose
``str()`` is a complete, actionable paragraph. The CLI prints it (exit code from
``exit_code``); the window shows it in a dialog. Anything else is a bug and is shown with
its traceback only under ``--debug``.
"""

from __future__ import annotations


class HeadtuneError(Exception):
    """Base class: the message is user-facing; ``exit_code`` is what the CLI returns."""

    exit_code = 1
    reported = False  # a Failed event carrying this message was emitted already


class BadInputError(HeadtuneError):
    """The user's input (plan, data, model) cannot be used; nothing was run or written."""

    exit_code = 2


class PlanError(BadInputError):
    """A plan key is unknown, of the wrong type, out of range or incompatible with another."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class DataError(BadInputError):
    """The dataset cannot be read or a row is malformed (the message names the line/row)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class ModelError(BadInputError):
    """The model cannot be found, is gated, needs remote code, or cannot be loaded."""


class RunFolderBusyError(BadInputError):
    """Another process is writing the run folder (the message names its PID); nothing was done."""


class RunError(HeadtuneError):
    """A failure while the run was going (after the plan, data and model were accepted)."""


class InternalError(RunError):
    """An unexpected exception: a bug in Headtune or a library, not a problem with the user's input.
    The message says so and where the traceback was saved."""


class OutOfMemoryError(RunError):
    """The device ran out of memory; the message says what to change in the plan."""


class ShardingError(PlanError):
    """A plan that sharded training (``training.sharding: fsdp``) cannot run; refused before loading."""

    def __init__(self, message: str, key: str | None = "training.sharding"):
        super().__init__(message, key)
