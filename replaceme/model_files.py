"""The files of a local model folder, read and checked before any work (no torch here).

The one reader of safetensors headers and of ``model.safetensors.index.json`` in
replaceme: :func:`check_model_folder` runs before a model is built (``prune``,
``compare``, ``distances``, ``evaluate``, ``--offload``) and
:class:`replaceme.checkpoint.Checkpoint` reads tensors through the same
:func:`checkpoint_layout`. Whatever is wrong is a one-line
:class:`~replaceme.errors.ReplacemeError`, found without reading any tensor data:

- a FIFO, device or socket in the folder (opening a FIFO would block forever) is
  refused after a ``stat``, never opened;
- a header that is not a safetensors header, or whose tensors do not fit in the file;
- an index naming a shard that is missing, or a tensor its shard does not hold;
- a ``config.json`` claiming more layers than the checkpoint holds, or another hidden
  size than its embedding (a config claiming a million layers would otherwise
  build for minutes before failing).

Format (https://github.com/huggingface/safetensors): 8 bytes little-endian header
length N, N bytes of JSON (``name -> {dtype, shape, data_offsets}`` plus
``__metadata__``), then the data; offsets are relative to the end of the header.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaceme.errors import ReplacemeError, first_line, shorten

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
#: the largest header we read (the format's own reader refuses more than 100 MB)
MAX_HEADER = 100 * 2**20
#: bytes per element of each safetensors dtype
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
#: ``<...>.layers.<i>.`` (Llama, Mistral, OPT, NeoX, ...), ``<...>.h.<i>.`` (GPT-2, Falcon), ``<...>.blocks.<i>.``
LAYER_NAME = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint: its file, safetensors dtype name, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def check_regular(path: Path, what: str = "") -> os.stat_result:
    """``stat`` ``path`` (never opening it) and refuse anything but a regular file."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        raise ReplacemeError(f"{what or path}: {path} is {kind}, not a file; refusing to read it")
    return info


def check_folder_entries(folder: Path) -> None:
    """Refuse a FIFO, device or socket anywhere at the top of a model folder (each is
    ``stat``-ed, none opened): the loaders open files there by name."""
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                mode = entry.stat().st_mode  # follows a symlink without opening its target
            except OSError:
                continue  # a dangling link: the loader names it if it needs it
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                check_regular(Path(entry.path))


def read_header(path: Path) -> dict[str, TensorEntry]:
    """``name -> TensorEntry`` from the header of one safetensors file, checked: the
    header is JSON of the documented shape and every tensor's bytes lie in the file
    and match its shape and dtype."""
    size = check_regular(path).st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(size - 8, MAX_HEADER):
                raise ValueError("bad header length")
            header = json.loads(fh.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        entries = {name: _entry(path, 8 + length, name, value) for name, value in header.items() if name != "__metadata__"}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ReplacemeError(f"{path}: corrupt safetensors file (unreadable header: {shorten(first_line(exc))})") from None
    end = max((e.end for e in entries.values()), default=8 + length)
    if end > size:
        raise ReplacemeError(f"{path}: corrupt safetensors file (truncated: {size} bytes, the header needs {end})")
    return entries


def _entry(path: Path, base: int, name: str, value: Any) -> TensorEntry:
    dtype, shape, (begin, end) = value["dtype"], tuple(value["shape"]), value["data_offsets"]
    if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)) or begin > end:
        raise ValueError(f"tensor {shorten(name, 100)!r}: bad shape or offsets")
    count = 1
    for d in shape:
        count *= d
    if dtype in DTYPE_SIZES and end - begin != count * DTYPE_SIZES[dtype]:
        raise ValueError(f"tensor {shorten(name, 100)!r}: {end - begin} bytes for shape {shorten(list(shape))} of {shorten(dtype, 20)}")
    return TensorEntry(path, str(dtype), shape, base + begin, base + end)


def read_index(folder: Path) -> dict[str, Path]:
    """``tensor name -> shard path`` of ``model.safetensors.index.json`` (shards inside ``folder``)."""
    index = folder / INDEX_FILE
    check_regular(index)
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("'weight_map' is not a mapping of names to files")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        raise ReplacemeError(f"{index}: not a valid safetensors index (no 'weight_map' of tensor names to files)") from None
    shards = {}
    for name, file in weight_map.items():
        if Path(file).is_absolute() or ".." in Path(file).parts:
            raise ReplacemeError(f"{index}: shard {shorten(file)!r} of {shorten(name, 100)!r} lies outside the model folder")
        shards[name] = folder / file
    return shards


def checkpoint_layout(folder: Path) -> dict[str, TensorEntry] | None:
    """Every tensor of the checkpoint in ``folder`` (sharded by the index, or one
    ``model.safetensors``), its headers checked; None when it has neither. A wrongly
    sharded index (a missing shard, a tensor its shard does not hold) is an error."""
    folder = Path(folder)
    if (folder / INDEX_FILE).exists():
        mapping = read_index(folder)
        headers: dict[Path, dict[str, TensorEntry]] = {}
        for file in sorted(set(mapping.values())):
            if not file.exists():
                raise ReplacemeError(f"{folder / INDEX_FILE} names a shard that is missing: {shorten(file.name)}")
            headers[file] = read_header(file)
        layout = {}
        for name, file in mapping.items():
            if name not in headers[file]:
                raise ReplacemeError(f"{folder / INDEX_FILE} is wrongly sharded: tensor {shorten(name)!r} is not in "
                                     f"{shorten(file.name)}")
            layout[name] = headers[file][name]
        return layout
    if (folder / SINGLE_FILE).exists():
        return read_header(folder / SINGLE_FILE)
    return None


def config_layers(config: dict[str, Any]) -> int | None:
    """The decoder layer count a raw ``config.json`` states, if it states one as an integer."""
    value = next((config[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if k in config), None)
    return value if type(value) is int else None


def check_config_fits(config: dict[str, Any], layout: dict[str, TensorEntry], where: str) -> None:
    """Refuse a ``config.json`` whose layer count exceeds the layers the checkpoint holds,
    or whose hidden size is not its embedding's width, before a model is built from it."""
    claimed = config_layers(config)
    held = sorted({int(m.group(1)) for name in layout if (m := LAYER_NAME.search(name))})
    if claimed is not None and held and claimed > len(held):
        missing = next(i for i in range(claimed) if i not in set(held))
        raise ReplacemeError(f"{where}: config.json says {claimed} layers but the checkpoint holds {len(held)} "
                             f"(the weights of layer {missing} are missing from the checkpoint)")
    hidden = next((config[k] for k in ("word_embed_proj_dim", "hidden_size", "n_embd", "d_model") if k in config), None)
    embedding = next((e for name, e in sorted(layout.items()) if name.endswith(EMBEDDING_SUFFIXES)), None)
    if type(hidden) is int and embedding is not None and len(embedding.shape) == 2 and embedding.shape[1] != hidden:
        raise ReplacemeError(f"{where}: config.json says hidden size {hidden} but the checkpoint's embedding has "
                             f"width {embedding.shape[1]}")



def folder_fingerprint(folder: str | Path) -> str:
    """Who a model folder is: a hash of its ``pruning.json`` (which a new prune rewrites,
    with its own creation time) and of the name, size and modification time of its
    config and weights. ``evaluate --model-card`` takes it before loading and again
    before writing the card, so one model's results never land in another's card."""
    import hashlib

    folder = Path(folder).expanduser()
    digest = hashlib.sha256()
    record = folder / "pruning.json"
    if record.is_file():
        check_regular(record)
        digest.update(record.read_bytes())
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.json")):
        if path.is_file():
            info = path.stat()
            digest.update(f"{path.name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def checkpoint_fingerprint(files: list[Path], config_text: str) -> str:
    """Who a checkpoint's weights are, without mapping them into the process: a hash of
    the config (``config_text``) and, per weights file, its name, size, modification
    time and 17 blocks of 4 KiB spread over it. The blocks are read through the page
    cache, so none of the weights counts against the process's memory (a sum over every
    parameter of a loaded model touches every page, the unused embedding rows too). An
    edit of a file changes its modification time; a copy of the folder is another
    checkpoint (its rows and statistics are computed again)."""
    import hashlib

    digest = hashlib.sha256(config_text.encode())
    for file in sorted(set(files)):
        info = file.stat()
        digest.update(f"{file.name}:{info.st_size}:{info.st_mtime_ns}".encode())
        with open(file, "rb") as fh:
            for k in range(17):
                fh.seek(info.st_size * k // 17)
                digest.update(fh.read(4096))
    return digest.hexdigest()[:24]
