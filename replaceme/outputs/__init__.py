"""How replaceme writes the user's files safely (one place, used by every command
and by the Python API).

The rules:

- **Inputs are never written.** An output may not be, contain, or lie inside
  an input (the source model directory, a calibration or perplexity file);
  paths are resolved (symlinks, ``..``) before they are compared
  (:mod:`~replaceme.outputs.checks`).
- **replaceme replaces only what it created, as it created it.** An existing
  output directory is replaced (with ``--overwrite``) only when it is empty, or
  when its record lists every file in it (exact relative paths) and each is
  unchanged (size, time or SHA-256) (:mod:`~replaceme.outputs.ownership`); a
  single file only when its folder's record lists it, unchanged. Anything else
  is refused, with or without ``--overwrite``, naming the first foreign files.
- **Outputs appear atomically, and a replacement cannot lose both copies.** A
  directory is written under a temporary name unique to the run and renamed
  into place; the previous one stays whole under a ``.old`` name until the new
  one is in place, and a later run restores it if the run died in between
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

from replaceme.outputs.checks import (
    OutputStatus,
    check_not_input,
    check_output,
    check_work_dirs,
    local_inputs,
    resolve,
)
from replaceme.outputs.directories import (
    atomic_directory,
    discard_directory,
    finish_replacement,
    mark_replacing,
    place_directory,
    set_aside,
)
from replaceme.outputs.file_outputs import output_file
from replaceme.outputs.files import atomic_file, write_json_atomic, write_text_atomic
from replaceme.outputs.lock import output_lock
from replaceme.outputs.ownership import (
    FILES_KIND,
    RECORD_FILE,
    Ownership,
    check_owned_file,
    claim,
    listing,
    read_ownership,
    record_tree,
    record_written,
    recording,
)
from replaceme.outputs.rename import rename_noreplace
from replaceme.outputs.runs import (
    OWNER_FILE,
    clean_stale,
    restore_orphan,
    make_parents,
    ordinary_permissions,
    remove_if_empty,
    temp_name,
)

__all__ = [
    "FILES_KIND", "OWNER_FILE", "RECORD_FILE", "OutputStatus", "Ownership", "atomic_directory", "atomic_file",
    "check_not_input", "check_output", "check_work_dirs", "check_owned_file", "claim", "clean_stale",
    "discard_directory", "finish_replacement", "listing", "mark_replacing", "set_aside", "local_inputs", "make_parents", "ordinary_permissions", "output_file", "output_lock", "place_directory",
    "read_ownership", "record_tree", "record_written", "recording", "remove_if_empty", "rename_noreplace", "resolve",
    "restore_orphan", "temp_name", "write_json_atomic", "write_text_atomic",
]
