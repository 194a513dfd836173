"""Errors raised by lexicons.

Every error is a :class:`LexiconsError`; each leaf also inherits the nearest
builtin, so callers may catch either::

    LexiconsError
     +-- SettingsError (ValueError)          a setting has a bad value or is unknown
     +-- ServiceError (RuntimeError)         a service cannot be built, started or found
     |    +-- IllegalTransition              a state change the lifecycle forbids
     +-- LockError (OSError)                 the lock file is held by a running daemon
     +-- ControlError (OSError)              the control socket cannot be reached
     +-- ProtocolError (ValueError)          bytes on a wire that do not follow its protocol
     |    +-- BadTrigger                     a high-templar trigger body lacks rooms or data
     +-- CallError (ValueError)              a client's call is wrong (unknown, bad arguments)
     |    +-- NotPermitted (PermissionError) the caller may not do what it asked
     +-- DatabaseError (ValueError)          the data layer refused an operation
     |    +-- ValidationError (TypeError)    a value does not match its field's type
     |    +-- DoesNotExist (LookupError)     no row matched
     |    +-- MultipleRowsFound (LookupError) several rows matched where one was expected
     |    +-- StorageError (OSError)         a data file or journal is damaged or unwritable
"""
from __future__ import annotations


class LexiconsError(Exception):
    """Root of every error lexicons raises."""


class SettingsError(LexiconsError, ValueError):
    """A setting is unknown, or its value is of the wrong type or out of range."""


class ServiceError(LexiconsError, RuntimeError):
    """A service cannot be built, started, stopped or found."""


class IllegalTransition(ServiceError):
    """A service was asked to move between two states the lifecycle does not join."""


class LockError(LexiconsError, OSError):
    """The lock file is held: another daemon runs with the same settings."""


class ControlError(LexiconsError, OSError):
    """The control socket cannot be reached or answered badly."""


class ProtocolError(LexiconsError, ValueError):
    """Bytes received do not follow the protocol spoken on that wire."""


class BadTrigger(ProtocolError):
    """A high-templar trigger (HTTP or AMQP) lacks its rooms or data, or is not JSON."""


class CallError(LexiconsError, ValueError):
    """A client's call cannot be run: unknown signal, bad or missing arguments."""


class NotPermitted(CallError, PermissionError):
    """The caller is not allowed to do what it asked."""


class DatabaseError(LexiconsError, ValueError):
    """The database refused an operation."""


class ValidationError(DatabaseError, TypeError):
    """A value does not match the type of the field it is written to."""


class DoesNotExist(DatabaseError, LookupError):
    """No row matched a lookup that needs one."""


class MultipleRowsFound(DatabaseError, LookupError):
    """Several rows matched a lookup that needs exactly one."""


class StorageError(DatabaseError, OSError):
    """A data file or the journal is damaged or cannot be written."""
