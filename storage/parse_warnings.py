"""Parsing received files with the warnings each one raised, so they can be told about that file.

pydicom warns about structural oddities it reads past ("End of file reached before delimiter ... in file
/data/tmp/x/11.dcm"). Printed by the parser process, such a line names a temporary copy and breaks the
import command's progress bar; returned with the file's outcome, it can be shown next to the user's file.
Kept apart from storage.archive so that parser processes import only what parsing needs.
"""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path

from storage.dicom_file import InvalidInstance, ParsedInstance, parse_files

Noted = tuple[ParsedInstance | InvalidInstance, list[str]]


def parse_files_noting_warnings(paths: list[Path], bulk_data_threshold: int) -> list[Noted]:
    """parse_files, with the warnings raised while parsing each file.

    Only in a parser process, which parses one file at a time: catching warnings swaps process-wide
    state, which the threads of the server process (several uploads parsed at once) would share."""
    if multiprocessing.parent_process() is None:
        return [(result, []) for result in parse_files(paths, bulk_data_threshold)]
    noted: list[Noted] = []
    for path in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every file's own warnings, not once per process
            (result,) = parse_files([path], bulk_data_threshold)
        noted.append((result, [str(w.message) for w in caught]))
    return noted
