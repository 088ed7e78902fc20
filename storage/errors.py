"""What storage can refuse, in its own words; the HTTP layer maps each kind to a status once.

str() of every error is a reason fit for a client: no patient data, no paths, no stack.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of the refusals below."""


class NotFound(StorageError):
    """No such study, series, instance, frame or value."""


class BadRequest(StorageError):
    """The request itself is malformed (a query, rendering parameters)."""


class CannotProduce(StorageError):
    """What is stored cannot be turned into the form asked for (decode, cut, render)."""


class NotReady(StorageError):
    """The form asked for will exist shortly (a master still being made): ask again."""


def no_such(study: str | None, series: str | None, sop: str | None) -> NotFound:
    """The "no such ..." error for the most specific level of the UIDs given."""
    return NotFound(f"no such {'instance' if sop else 'series' if series else 'study'}")


def _index_unreachable() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    # A refused or reset connection, a connect or statement timeout, a connection the database dropped.
    return (ConnectionError, TimeoutError, OperationalError, InterfaceError, PoolTimeout)


# What the index raises when the database cannot be reached: the HTTP layer answers 503 with Retry-After.
INDEX_UNREACHABLE = _index_unreachable()
