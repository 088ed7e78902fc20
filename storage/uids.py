"""UID syntax (PS3.5 9.1): digits and dots, at most 64 characters."""

import re

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# Some modalities write components with leading zeros; we store them, but they must still be
# digits and dots so they are safe in URLs and blob keys.
_LENIENT_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_LENIENT_UID.match(value))


def is_strict_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_UID.match(value))
