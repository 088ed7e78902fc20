"""Who wrote a file: this server's Implementation Class UID and Version Name (PS3.7 D.3.3.2, PS3.10 7.1).

Every file the server writes (masters, and received files that came without a Part 10 header) names
this implementation in its File Meta Information, not whoever wrote the input.
"""

from __future__ import annotations

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

# Under pydicom's UID root (the project has no root of its own yet), derived once, deterministically, as
# generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["dicomweb-progressive", "Implementation Class UID"]):
# the same value on every machine and every release (tests/test_masters.py derives it again).
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.56993658894491812862922273779002216499"
# SH, at most 16 characters: bump with releases.
IMPLEMENTATION_VERSION_NAME = "DICOMWEBPROG_0.1"


def stamp_file_meta(meta: FileMetaDataset) -> None:
    """Name this server as the implementation that wrote the file (PS3.10 7.1), and drop the Source
    Application Entity Title of whoever wrote it before (this server writes files as no AE)."""
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "SourceApplicationEntityTitle" in meta:
        del meta.SourceApplicationEntityTitle
