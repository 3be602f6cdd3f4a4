"""Where activations wait between layers: files in a run-unique directory, read back on demand.

The layer-by-layer engine (:mod:`replaceme.offload.engine`) keeps the hidden states
of every batch at the current boundary; in RAM they would grow with the data
(8,000 × 1,024 tokens × hidden 4096 × 2 bytes = 67 GB per boundary), so by default
they go to files (:class:`DiskStore`) read back one batch at a time.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import torch


class RunDirectory:
    """A run-unique temporary directory, removed by :meth:`close` (a context manager).

    Made by :func:`replaceme.outputs.runs.make_run_dir` (``<parent>/<prefix><host>-<pid>-<random>``
    with an owner file), so that what a killed run leaves is removed by a later one.
    """

    prefix = "replaceme-"

    def __init__(self, parent: str | Path | None = None):
        from replaceme.outputs.runs import make_run_dir

        self.path = make_run_dir(parent, self.prefix)
        self._names = itertools.count()
        self.bytes_written = 0

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SpilledTensor:
    """A tensor kept in a file and read back on demand into ordinary memory.

    Unlike a memory map, a read (:meth:`load`, or ``.to(...)`` like a tensor) gives
    memory that is freed with the tensor, so the process holds only what is being
    used; the file is deleted with the object.
    """

    def __init__(self, path: Path, dtype: torch.dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = path, dtype, shape

    def load(self) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=self.dtype)
        if out.numel():
            with open(self.path, "rb") as fh:
                fh.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy()))
        return out

    def to(self, *args, **kwargs) -> torch.Tensor:
        return self.load().to(*args, **kwargs)

    def __del__(self) -> None:
        try:
            os.unlink(self.path)
        except (OSError, TypeError):
            pass


class DiskStore(RunDirectory):
    """Writes tensors to files in a run-unique directory, returning :class:`SpilledTensor` s.

    Used by the layer-by-layer pass for the activations that wait between layers:
    all calibration tokens at a few boundaries, which in RAM would grow with the
    calibration set (8,000 × 1,024 tokens × hidden 4096 × 2 bytes = 67 GB per boundary).
    """

    prefix = "replaceme-window-"

    def __call__(self, tensor: torch.Tensor) -> SpilledTensor:
        value = tensor.detach().to("cpu").contiguous()
        file = self.path / f"{next(self._names)}.bin"
        with open(file, "wb") as fh:
            if value.numel():
                fh.write(value.reshape(-1).view(torch.uint8).numpy().data)
        self.bytes_written += value.numel() * value.element_size()
        return SpilledTensor(file, value.dtype, tuple(value.shape))
