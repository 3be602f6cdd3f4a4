"""How replaceme writes the user's files safely (one place, used by every command
and by the Python API).

The rules:

- **Inputs are never written.** An output may not be, contain, or lie inside
  an input (the source model directory, a calibration or perplexity file);
  paths are resolved (symlinks, ``..``) before they are compared
  (:mod:`~replaceme.outputs.checks`).
- **replaceme replaces only what it created.** An existing output directory is
  replaced (with ``--overwrite``) only when it is empty, or when it carries
  replaceme's ownership record and holds nothing but the files that record
  lists (:mod:`~replaceme.outputs.ownership`). A directory without that record
  is refused, with or without ``--overwrite``.
- **Outputs appear atomically.** A directory is written under a temporary name
  unique to the run and renamed into place; a rename that would land on a
  directory another run has just created fails instead of replacing it
  (:mod:`~replaceme.outputs.directories`, :mod:`~replaceme.outputs.files`).
- **Two runs never write one output.** A lock file beside the output is taken
  before any work; a second run gets a one-line error at once
  (:mod:`~replaceme.outputs.lock`).
- **Leftovers of killed runs are found.** Temporaries whose owner process is
  gone are removed (with a warning) by the next run that writes the same output
  (:mod:`~replaceme.outputs.runs`).
- **Ordinary permissions.** Everything written respects the umask (never the
  0600 of ``mkstemp``/``mkdtemp``).
"""

from replaceme.outputs.checks import OutputStatus, check_not_input, check_output, local_inputs, resolve
from replaceme.outputs.directories import atomic_directory, discard_directory, place_directory
from replaceme.outputs.file_outputs import output_file
from replaceme.outputs.files import atomic_file, write_json_atomic, write_text_atomic
from replaceme.outputs.lock import output_lock
from replaceme.outputs.ownership import (
    MARKER_FILES,
    OWNER_KEY,
    Ownership,
    check_owned_file,
    claim,
    listing,
    literal,
    ownership_record,
    read_ownership,
)
from replaceme.outputs.rename import rename_noreplace
from replaceme.outputs.runs import (
    OWNER_FILE,
    clean_stale,
    make_parents,
    ordinary_permissions,
    remove_if_empty,
    temp_name,
)

__all__ = [
    "MARKER_FILES", "OWNER_FILE", "OWNER_KEY", "OutputStatus", "Ownership", "atomic_directory", "atomic_file",
    "check_not_input", "check_output", "check_owned_file", "claim", "clean_stale", "discard_directory", "listing",
    "literal", "local_inputs", "make_parents", "ordinary_permissions", "output_file", "output_lock",
    "ownership_record", "place_directory", "read_ownership", "remove_if_empty", "rename_noreplace", "resolve",
    "temp_name", "write_json_atomic", "write_text_atomic",
]
