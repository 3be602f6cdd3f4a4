"""Reading a safetensors checkpoint lazily, and writing one tensor at a time.

Used by ``prune --offload`` (:mod:`replaceme.offload`), where the model is never
whole in memory:

- :class:`Checkpoint` maps tensor names to their files (``model.safetensors`` or
  a sharded ``model.safetensors.index.json``) and reads only the tensors (or
  rows) asked for, with positioned reads (no memory map stays resident).
- :class:`ShardWriter` writes the safetensors format itself: the header (names,
  dtypes, shapes, offsets) is known before any data, since every output tensor's
  shape is known in advance, so each tensor is produced, written and dropped in
  turn. ``safetensors.torch.save_file`` would first build the whole file in memory.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian
header length N, N bytes of JSON header (``name -> {dtype, shape, data_offsets}``
plus ``__metadata__``), padded with spaces to a multiple of 8, then the raw
little-endian bytes of every tensor, C order.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from replaceme.errors import ReplacemeError
from replaceme.model_files import INDEX_FILE, SINGLE_FILE, checkpoint_layout

#: torch dtype -> safetensors dtype name.
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip
_TORCH_DTYPES = {v: k for k, v in DTYPE_NAMES.items()}


class Checkpoint:
    """The tensors of a local safetensors checkpoint, read on demand.

    Reads are positioned reads (``seek`` + ``readinto``) into tensors we own, driven
    by each file's header (read and checked by
    :func:`replaceme.model_files.checkpoint_layout`), rather than
    ``safetensors.safe_open``: that call memory-maps the file, and every mapped
    page we touch counts toward the process's resident memory until the file is closed, so reading an embedding
    in chunks through one open handle would still end with all of it resident.

    Args:
        directory: a model directory holding ``model.safetensors`` or
            ``model.safetensors.index.json`` and its shards.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        layout = checkpoint_layout(self.directory)  # every header read and checked, the index against its shards
        if layout is None:
            raise ReplacemeError(
                f"--offload needs a local model directory with safetensors weights; {self.directory} has neither "
                f"{SINGLE_FILE} nor {INDEX_FILE}"
            )
        unknown = sorted({e.dtype for e in layout.values()} - set(_TORCH_DTYPES))
        if unknown:
            raise ReplacemeError(f"--offload cannot read tensors of dtype {unknown[0]!r} in {self.directory}")
        #: ``name -> (file, dtype, shape, absolute start, end)``
        self._tensors = {name: (e.file, _TORCH_DTYPES[e.dtype], e.shape, e.start, e.end) for name, e in layout.items()}
        self.files = {name: e.file for name, e in layout.items()}

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def info(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of a tensor, from its file's header only."""
        _, dtype, shape, _, _ = self._tensors[name]
        return dtype, shape

    def read_range(self, name: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """Tensor ``name``, or its rows ``lo:hi`` (first dimension), on CPU in its stored dtype."""
        file, dtype, shape, start, end = self._tensors[name]
        if lo is None:
            lo, hi = 0, (shape[0] if shape else 1)
        rows = shape[0] if shape else 1
        row_bytes = (end - start) // rows if rows else 0
        out = torch.empty(((hi - lo), *shape[1:]) if shape else (), dtype=dtype)
        if out.numel():
            with open(file, "rb") as fh:
                fh.seek(start + lo * row_bytes)
                view = out.reshape(-1).view(torch.uint8).numpy()
                if fh.readinto(memoryview(view)) != view.nbytes:
                    raise ReplacemeError(f"{file}: truncated data for tensor {name}")
        return out

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (CPU, checkpoint dtype)."""
        return {name: self.read_range(name) for name in names}

    def read_rows(self, name: str, rows: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Rows ``rows`` (a 1-D index tensor) of the 2-D tensor ``name``, reading
        ``chunk`` rows at a time, so an embedding matrix is never read whole."""
        dtype, shape = self.info(name)
        rows = rows.to(torch.long)
        out = torch.empty((rows.numel(), *shape[1:]), dtype=dtype)
        for lo in range(0, shape[0], chunk):
            hi = min(lo + chunk, shape[0])
            pick = ((rows >= lo) & (rows < hi)).nonzero().flatten()
            if pick.numel():
                out[pick] = self.read_range(name, lo, hi)[rows[pick] - lo]
        return out


@dataclass
class PlannedTensor:
    """One tensor of an output checkpoint: its name, dtype and shape, and how to
    produce it, as consecutive row blocks (so a large tensor never has to be whole)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], Iterable[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty((), dtype=self.dtype).element_size()


def write_shard(path: Path, tensors: list[PlannedTensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to one safetensors file, producing and dropping them one block at a time."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for t in tensors:
            written = 0
            for block in t.produce():
                value = block.detach().to("cpu", t.dtype).contiguous()
                if value.numel():
                    fh.write(value.reshape(-1).view(torch.uint8).numpy().data)
                written += value.numel() * value.element_size()
                del value, block
            if written != t.nbytes:
                raise RuntimeError(f"{t.name}: produced {written} bytes, planned {t.nbytes}")


def stored_blocks(checkpoint: Checkpoint, name: str, block_bytes: int = 16 * 2**20) -> Iterator[torch.Tensor]:
    """Tensor ``name`` of ``checkpoint`` as consecutive row blocks of about ``block_bytes``."""
    _, shape = checkpoint.info(name)
    if len(shape) < 2:
        yield checkpoint.read_range(name)
        return
    first = checkpoint.read_range(name, 0, 1)
    step = max(1, block_bytes // max(1, first.numel() * first.element_size()))
    for lo in range(0, shape[0], step):
        yield checkpoint.read_range(name, lo, min(lo + step, shape[0]))


def write_checkpoint(directory: Path, tensors: list[PlannedTensor], max_shard_bytes: int = 2 * 2**30) -> list[Path]:
    """Write ``tensors`` (in order) as ``model.safetensors``, or as shards of at most
    ``max_shard_bytes`` (a single larger tensor gets a shard of its own) plus
    ``model.safetensors.index.json``, like ``save_pretrained``."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    if len(shards) == 1:
        write_shard(directory / SINGLE_FILE, shards[0])
        return [directory / SINGLE_FILE]
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for file, shard in zip(files, shards):
        write_shard(directory / file, shard)
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors)},
        "weight_map": {t.name: file for file, shard in zip(files, shards) for t in shard},
    }
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [directory / f for f in files]
