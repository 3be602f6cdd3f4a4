"""Reading a safetensors checkpoint lazily, and writing one tensor at a time.

Used by ``prune --offload`` (:mod:`replaceme.offload`), where the model is never
whole in memory:

- :class:`Checkpoint` maps tensor names to their files (``model.safetensors`` or
  a sharded ``model.safetensors.index.json``) and reads only the tensors asked
  for, through ``safetensors.safe_open``; each read opens the file, copies the
  tensors out and closes it, so no mapping of the whole file stays resident.
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from replaceme.errors import ReplacemeError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

#: torch dtype -> safetensors dtype name.
DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip


class Checkpoint:
    """The tensors of a local safetensors checkpoint, read on demand.

    Args:
        directory: a model directory holding ``model.safetensors`` or
            ``model.safetensors.index.json`` and its shards.
    """

    def __init__(self, directory: str | Path):
        from safetensors import safe_open

        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        single = self.directory / SINGLE_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {name: self.directory / file for name, file in weight_map.items()}
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                self.files = {name: single for name in f.keys()}
        else:
            raise ReplacemeError(
                f"--offload needs a local model directory with safetensors weights; {self.directory} has neither "
                f"{SINGLE_FILE} nor {INDEX_FILE}"
            )
        self._info: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}

    def names(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (CPU, checkpoint dtype), one open per file."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for file, group in by_file.items():
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in group:
                    out[name] = f.get_tensor(name)
        return out

    def info(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of a tensor, from its file's header only."""
        if name not in self._info:
            self._load_info(self.files[name])
        return self._info[name]

    def _load_info(self, file: Path) -> None:
        with open(file, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        names = {v: k for k, v in DTYPE_NAMES.items()}
        for name, entry in header.items():
            if name != "__metadata__":
                self._info[name] = (names[entry["dtype"]], tuple(entry["shape"]))

    def read_rows(self, name: str, rows: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Rows ``rows`` (a 1-D index tensor) of the 2-D tensor ``name``, reading
        ``chunk`` rows at a time, so an embedding matrix is never read whole."""
        from safetensors import safe_open

        _, shape = self.info(name)
        rows = rows.to(torch.long)
        out = None
        with safe_open(self.files[name], framework="pt", device="cpu") as f:
            view = f.get_slice(name)
            for lo in range(0, shape[0], chunk):
                hi = min(lo + chunk, shape[0])
                pick = ((rows >= lo) & (rows < hi)).nonzero().flatten()
                if pick.numel() == 0:
                    continue
                block = view[lo:hi]
                if out is None:
                    out = torch.empty((rows.numel(), *shape[1:]), dtype=block.dtype)
                out[pick] = block[rows[pick] - lo]
        if out is None:
            raise ReplacemeError(f"no rows asked of {name}")
        return out


@dataclass
class PlannedTensor:
    """One tensor of an output checkpoint: its name, dtype and shape, and how to produce it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty((), dtype=self.dtype).element_size()


def write_shard(path: Path, tensors: list[PlannedTensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to one safetensors file, producing and dropping them one at a time."""
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
            value = t.produce().detach().to("cpu", t.dtype).contiguous()
            if tuple(value.shape) != t.shape:
                raise RuntimeError(f"{t.name}: produced shape {tuple(value.shape)}, planned {t.shape}")
            if value.numel():
                fh.write(value.reshape(-1).view(torch.uint8).numpy().data)
            del value


def write_checkpoint(directory: Path, tensors: list[PlannedTensor], max_shard_bytes: int = 2 * 2**30) -> list[Path]:
    """Write ``tensors`` as ``model.safetensors``, or as shards of at most
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
