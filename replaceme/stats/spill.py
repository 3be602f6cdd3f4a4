"""Activations kept on disk instead of in RAM (memory-mapped files).

The paper fits its cosine map on every calibration token (8,000 × 1,024 tokens;
at hidden 4096 that is 67 GB per matrix in bfloat16), which no host holds in RAM
beside a model. With a :class:`Spill`, every tensor the statistics pass keeps
(the activation sample, and in the layer-by-layer pass the window of boundary
states) is written to a file in a run-unique temporary directory and mapped back
read-only (``torch.from_file``, a private mapping): its pages live in the page
cache, which the kernel writes back and evicts as needed, so resident memory
stays bounded whatever ``token_budget`` is.

Each file is unlinked as soon as it is mapped: the mapping keeps the data alive
until the tensor is freed, and nothing is left on disk even if the run is killed.
The directory itself is removed by :meth:`Spill.close` (a context manager).
"""

from __future__ import annotations

import os

import torch

from replaceme.offload.window import DiskStore, RunDirectory, SpilledTensor

__all__ = ["DiskStore", "Spill", "SpilledTensor"]


class Spill(RunDirectory):
    """A run-unique directory for memory-mapped tensors.

    Args:
        parent: where to create it (default: the system temporary directory,
            ``$TMPDIR``); put it on a disk with room for the sample.
    """

    prefix = "replaceme-spill-"

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU copy of ``tensor`` backed by a file (same dtype and shape)."""
        value = tensor.detach().to("cpu").contiguous()
        if value.numel() == 0:
            return value.clone()
        file = self.path / f"{next(self._names)}.bin"
        with open(file, "wb") as fh:
            fh.write(value.reshape(-1).view(torch.uint8).numpy().data)
        try:
            mapped = torch.from_file(str(file), shared=False, size=value.numel(), dtype=value.dtype)
        finally:
            os.unlink(file)  # the mapping keeps the data until the tensor is freed
        self.bytes_written += value.numel() * value.element_size()
        return mapped.view(value.shape)
