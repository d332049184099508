"""Exceptions that name the problem and the fix.

Every error lowbit raises on bad input derives from :class:`LowbitError`, so a
caller (and the CLI) can tell a user mistake from a bug. Each one also derives
from the builtin it refines (``ValueError``, ``FileNotFoundError``), so code that
catches the builtin keeps working.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of all user-facing lowbit errors."""


class ConfigError(LowbitError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DataError(LowbitError, ValueError):
    """Input data are unusable: NaN/inf, empty, or of the wrong shape."""


class DatasetNotFoundError(LowbitError, FileNotFoundError):
    """A data set is not installed; the message names the command that installs it."""


class CheckpointError(LowbitError, ValueError):
    """A weights or checkpoint file is missing, corrupt, truncated or foreign."""


class ShapeError(LowbitError, ValueError):
    """A tensor's shape does not fit what a model or kernel was built for; the message names the layer or
    input, the expected and the received shape."""


class LowbitWarning(UserWarning):
    """A request that had no effect, or less than asked (a rule that matches no layer, an equalization
    that found no pair, a bit width no layer gets); the message names what was asked and what happened."""
