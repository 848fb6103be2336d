"""The project's error hierarchy: which failures are the user's to fix, recognisable without torch.

Every error a user can cause and fix (a bad recipe key, an unknown adapter, a corrupt source file,
an export asked for the impossible) derives from :class:`UserError`. The ``sonofm`` command turns
those, and the operating-system errors a user causes (a missing file, a full disk), into one line
on stderr; anything else is a bug and keeps its traceback. This module imports nothing heavy, so
the CLI can tell the two apart without first importing the torch stack (which takes seconds).
"""

from __future__ import annotations

import errno

#: ``OSError`` numbers that describe the user's environment, not a bug, with what to do about them.
_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EDQUOT: "disk quota exceeded: free some space or write somewhere else",
    errno.ENAMETOOLONG: "use a shorter path",
}

#: ``OSError`` subclasses that always come from a path the user gave (or its permissions).
_USER_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)


class UserError(Exception):
    """A failure the user caused and can fix: the message says which file or key and what to do."""

    def __str__(self) -> str:  # KeyError would quote its message; a user error reads as plain text
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UnknownNameError(UserError, KeyError):
    """A name that is not one of the known ones (an adapter, ...); still a ``KeyError`` for old callers."""


class BadOptionError(UserError, TypeError):
    """An option that the named component does not take; still a ``TypeError`` for old callers."""


class UnreadableFileError(UserError, ValueError):
    """A file sonofm wrote earlier (a checkpoint, an index) that is now truncated or corrupt."""


def is_user_error(exc: BaseException) -> bool:
    """True for errors the user can fix (print one line); False for bugs (keep the traceback)."""
    if isinstance(exc, UserError):
        return True
    if isinstance(exc, _USER_OS_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in _OS_HINTS


def one_line(exc: BaseException) -> str:
    """The error as one line: multi-line messages joined, OS errors as ``path: reason (what to do)``."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, UserError):
        where = f"{exc.filename}: " if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{exc.filename} -> {exc.filename2}: "
        hint = _OS_HINTS.get(exc.errno or 0)
        text = f"{where}{exc.strerror}" + (f" ({hint})" if hint else "")
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


__all__ = ["UserError", "UnknownNameError", "BadOptionError", "UnreadableFileError", "is_user_error", "one_line"]
