"""Errors raised by lexicons.

Every error is a :class:`LexiconsError`; each leaf also inherits the nearest
builtin, so callers may catch either::

    LexiconsError
     +-- SettingsError (ValueError)          a setting has a bad value or is unknown
     |    +-- EntryError (ServiceError)      a SERVICE_LIST/FILTERS entry names nothing there
     +-- ServiceError (RuntimeError)         a service cannot be built, started or found
     |    +-- IllegalTransition              a state change the lifecycle forbids
     +-- LockError (OSError)                 the lock file is held by a running daemon
     +-- ControlError (OSError)              the control socket cannot be reached
     +-- ProtocolError (ValueError)          bytes on a wire that do not follow its protocol
     |    +-- BadTrigger                     a high-templar trigger body lacks rooms or data
     +-- CallError (ValueError)              a client's call is wrong (unknown, bad arguments)
     |    +-- NotPermitted (PermissionError) the caller may not do what it asked
     |    +-- CallFailed                     (client side) the server answered a call with errors
     +-- Refused (ConnectionError)           (client side) the server refused the connection
     +-- DatabaseError (ValueError)          the data layer refused an operation
     |    +-- ValidationError (TypeError)    a value does not match its field's type
     |    +-- DoesNotExist (LookupError)     no row matched
     |    +-- MultipleRowsFound (LookupError) several rows matched where one was expected
     |    +-- IntegrityError                 a write would leave a reference pointing at nothing
     |    +-- StorageError (OSError)         a data file or journal is damaged or unwritable
     |    +-- Unavailable (ConnectionError)  a replicated write cannot reach its stream
     +-- TaskError (RuntimeError)            a task is declared wrongly, or a required one failed
"""
from __future__ import annotations


class LexiconsError(Exception):
    """Root of every error lexicons raises."""


class SettingsError(LexiconsError, ValueError):
    """A setting is unknown, or its value is of the wrong type or out of range."""


class ServiceError(LexiconsError, RuntimeError):
    """A service cannot be built, started, stopped or found."""


class EntryError(SettingsError, ServiceError):
    """A ``'module.path/ClassName'`` setting names a module or class that is not there."""


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


class CallFailed(CallError):
    """The server answered a call with errors (client side); ``errors`` lists them."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = list(errors)


class Refused(LexiconsError, ConnectionError):
    """The server refused the websocket connection (client side), with status and reason."""

    def __init__(self, status: int, reason: str, messages: list | None = None):
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason
        self.messages = messages or []   # what the server's headers sent before refusing


class DatabaseError(LexiconsError, ValueError):
    """The database refused an operation."""


class ValidationError(DatabaseError, TypeError):
    """A value does not match the type of the field it is written to."""


class DoesNotExist(DatabaseError, LookupError):
    """No row matched a lookup that needs one."""


class MultipleRowsFound(DatabaseError, LookupError):
    """Several rows matched a lookup that needs exactly one."""


class IntegrityError(DatabaseError):
    """A write would leave a reference pointing at no row (or drop a row still referred to)."""


class StorageError(DatabaseError, OSError):
    """A data file or the journal is damaged or cannot be written."""


class Unavailable(DatabaseError, ConnectionError):
    """A replicated database cannot take a write now (its Redis Stream is out of reach)."""


class TaskError(LexiconsError, RuntimeError):
    """A task is declared wrongly, or a startup task the application requires failed."""
