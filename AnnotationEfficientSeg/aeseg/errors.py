"""User-facing errors.

Library code raises :class:`AesegError` (or a subclass) for anything a user can fix:
a bad path, an unreadable image, a cohort that lacks what a method needs. The CLI turns
it into one line on stderr and a non-zero exit status; tracebacks are for ``--debug``.
"""

from __future__ import annotations


class AesegError(Exception):
    """An error the user can fix; its message says what is wrong and how to fix it."""


class CohortError(AesegError):
    """The cohort folder or manifest is unusable."""


class ConfigError(AesegError):
    """A configuration value is invalid."""


class MethodUnavailable(AesegError):
    """The chosen method cannot run on this cohort (message names what is missing)."""


class JobError(AesegError):
    """A job folder is missing, incomplete or cannot be resumed."""
