"""Who wrote a file: this server's Implementation Class UID and Version Name (PS3.7 D.3.3.2, PS3.10 7.1).

Every file the server writes (masters, and received files that came without a Part 10 header) names
this implementation in its File Meta Information, not whoever wrote the input.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

# Derived once, deterministically, under pydicom's UID root (the project has no root of its own yet):
# the same value on every machine and every release.
IMPLEMENTATION_CLASS_UID = generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["dicomweb-progressive"])


def _version_name() -> str:
    try:
        release = version("dicomweb-progressive")
    except PackageNotFoundError:  # running from a checkout that was never installed
        release = "0"
    # SH, at most 16 characters.
    return f"DICOMWEBPROG_{release.replace('.', '')}"[:16]


IMPLEMENTATION_VERSION_NAME = _version_name()
