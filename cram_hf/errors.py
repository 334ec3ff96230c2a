"""The user's errors, for the ``cram-hf`` CLI and the recipes alike: one exception type and one adapter.

A bad argument or input is found before any work, raised as :class:`UsageError` (or turned into one by
:func:`validated`) and printed as one line with exit status 2, no traceback. Standard library only, so the CLI's
``--help`` stays fast."""

from __future__ import annotations

from typing import Callable

# What a check of an argument raises: ValueError, and the path checks' FileNotFoundError & co.
ARGUMENT_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class UsageError(ValueError):
    """A bad argument or input, found before any work; shown as one line, exit status 2."""


def validated(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, a check of the arguments or inputs: its errors are the user's, so they become
    :class:`UsageError`."""
    try:
        return fn(*args, **kwargs)
    except UsageError:
        raise
    except ARGUMENT_ERRORS as err:
        raise UsageError(str(err)) from err
