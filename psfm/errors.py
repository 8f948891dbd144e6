"""Exceptions raised by psfm.

Every exception subclasses :class:`PsfmError` and, where it fits, the builtin it refines
(``ConfigError`` is a ``ValueError``), so callers can catch either. Messages follow one
template: what (parameter, file, column), the rule, and the value that was given.
Exceptions keep their constructor arguments in ``args`` so they pickle across processes.
"""

from __future__ import annotations

__all__ = ["PsfmError", "ConfigError", "DataError", "CheckpointError"]


class PsfmError(Exception):
    """Base class of every error psfm raises on purpose."""


class ConfigError(PsfmError, ValueError):
    """A configuration value breaks its rule.

    >>> ConfigError("The 'l1' parameter of FtrlConfig must be a float >= 0. Got -0.1 instead.")
    """


class DataError(PsfmError, ValueError):
    """Input data breaks the schema: names the file, row group, column and value."""


class CheckpointError(PsfmError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""
