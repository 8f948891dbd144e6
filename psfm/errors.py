"""Exceptions raised by psfm.

Every exception subclasses :class:`PsfmError` and, where it fits, the builtin it refines
(``ConfigError`` is a ``ValueError``), so callers can catch either. Messages follow one
template: what (parameter, file, column), the rule, and the value that was given.
Exceptions keep their constructor arguments in ``args`` so they pickle across processes.
"""

from __future__ import annotations

import re

__all__ = ["PsfmError", "ConfigError", "DataError", "CheckpointError", "RunStopped", "user_message"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PsfmError(Exception):
    """Base class of every error psfm raises on purpose."""


class ConfigError(PsfmError, ValueError):
    """A configuration value breaks its rule, e.g. ``ConfigError("The 'l1' parameter of
    FtrlConfig must be a float >= 0. Got -0.1 instead.")``."""


class DataError(PsfmError, ValueError):
    """Input data breaks the schema: names the file, row group, column and value."""


class CheckpointError(PsfmError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match its manifest."""


class RunStopped(PsfmError, RuntimeError):
    """The run cannot go on for a reason outside it (the local Ray lost its raylet): it ends
    with what its checkpoints hold, which ``--resume`` continues from."""


def user_message(error: BaseException) -> str:
    """The one line to show a user for ``error``: a :class:`PsfmError` raised in another
    process reaches the caller wrapped (Ray's task errors carry the remote traceback in their
    text and the original in ``cause``); the innermost PsfmError's own message is the line.
    Anything else: its type and text, colour codes removed.

    >>> user_message(DataError("File 'a.parquet', row 3, column 'label': value 2 ..."))
    "File 'a.parquet', row 3, column 'label': value 2 ..."
    """
    seen: set[int] = set()
    e: BaseException | None = error
    found: BaseException | None = None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        nxt = getattr(e, "cause", None)
        wrapper = isinstance(nxt, BaseException)  # a class made from the cause, with its text
        if isinstance(e, PsfmError) and not wrapper:
            found = e
        e = nxt if wrapper else e.__cause__
    if found is not None:
        return str(found)
    text = _ANSI.sub("", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"
