"""UID syntax (PS3.5 9.1): digits and dots, at most 64 characters."""

import re

# PS3.5 forbids leading zeros in components, but some modalities write them; such UIDs are stored,
# as long as they are digits and dots (safe in URLs and blob keys).
_LENIENT_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    return len(value) <= 64 and bool(_LENIENT_UID.match(value))
