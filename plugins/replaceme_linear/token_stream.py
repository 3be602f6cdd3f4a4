"""The cosine fit's token sample, read chunk by chunk.

The paper fits its cosine map on every calibration token (8,000 × 1,024 at hidden
4096: 67 GB per matrix in bfloat16); stacked on the compute device in float32 that
is out of reach. :class:`ChunkedTokens` holds no token itself: it knows how to read
each *part* of the sample (one calibration batch: its non-pad rows of ``m_{s-1}``,
``x_s``, ``x_e``, from RAM or from the memory-mapped spill) and groups consecutive
parts into chunks of at most ``chunk_tokens`` tokens. A fit visits the chunks in
turn, so the compute device holds one chunk (``chunk_tokens × hidden × 4 bytes``
per matrix, two or three matrices) whatever the token budget. When the whole sample
is one chunk it is read once and kept, as a stacked sample would be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

#: one part of a sample: ``() -> (x, target, offset or None)``, each ``[n, h]`` (any dtype, any device)
Part = Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


class ChunkedTokens:
    """Token rows ``(x, target, offset)`` of a fit, read part by part in chunks.

    Args:
        parts: readers of the sample's parts, in order.
        counts: the number of token rows each part returns.
        device: where a chunk is put (in float32).
        chunk_tokens: at most this many tokens per chunk (a part larger than that is
            a chunk of its own, read whole).
    """

    def __init__(self, parts: list[Part], counts: list[int], *, device: str | torch.device = "cpu",
                 chunk_tokens: int = 65536):
        if len(parts) != len(counts):
            raise ValueError("one count per part")
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1")
        self.parts, self.counts, self.device = parts, [int(c) for c in counts], torch.device(device)
        self.chunk_tokens = chunk_tokens
        self.groups: list[list[int]] = []
        size = 0
        for i, count in enumerate(self.counts):
            if not self.groups or size + count > chunk_tokens:
                self.groups.append([])
                size = 0
            self.groups[-1].append(i)
            size += count
        self._kept: tuple | None = None
        #: bytes of the largest chunk read so far (what a fit holds of the sample at once)
        self.peak_bytes = 0

    @classmethod
    def of_tensors(cls, x: torch.Tensor, target: torch.Tensor, offset: torch.Tensor | None = None, *,
                   chunk_tokens: int | None = None) -> ChunkedTokens:
        """Tensors already in memory, sliced into chunks (one chunk by default)."""
        n = x.shape[0]
        step = max(1, chunk_tokens or n)
        bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]

        def part(lo: int, hi: int) -> Part:
            return lambda: (x[lo:hi], target[lo:hi], None if offset is None else offset[lo:hi])

        return cls([part(lo, hi) for lo, hi in bounds], [hi - lo for lo, hi in bounds], device=x.device,
                   chunk_tokens=step)

    @property
    def tokens(self) -> int:
        return sum(self.counts)

    def __len__(self) -> int:
        return len(self.groups)

    def chunk_size(self, k: int) -> int:
        return sum(self.counts[i] for i in self.groups[k])

    def part_rows(self, k: int) -> list[slice]:
        """The rows of chunk ``k`` that each of its parts gave, in order."""
        rows, start = [], 0
        for i in self.groups[k]:
            rows.append(slice(start, start + self.counts[i]))
            start += self.counts[i]
        return rows

    def by_part(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Every part's rows, in order, read chunk by chunk: sums taken part by part in this
        order are the same whatever the chunk size (so a fit does not depend on it)."""
        for k in range(len(self)):
            chunk = self.chunk(k)
            for rows in self.part_rows(k):
                yield tuple(None if c is None else c[rows] for c in chunk)

    def chunk(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Chunk ``k`` as float32 tensors on the device (kept when it is the only one)."""
        if self._kept is not None:
            return self._kept
        read = [self.parts[i]() for i in self.groups[k]]

        def stack(j: int) -> torch.Tensor | None:
            if read[0][j] is None:
                return None
            pieces = [r[j].to(self.device, torch.float32) for r in read]
            return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

        out = (stack(0), stack(1), stack(2))
        if len(self.groups) == 1:
            self._kept = out
        self.peak_bytes = max(self.peak_bytes, sum(t.numel() * t.element_size() for t in out if t is not None))
        return out

    def normal_equations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``XᵀX`` and ``XᵀY`` over every part in order, float64 (``Y = target − offset``):
        the least-squares map of this very sample, which depends on nothing else (not even
        the chunk size)."""
        xtx = xty = None
        for x, target, offset in self.by_part():
            x64 = x.to(torch.float64)
            y64 = target.to(torch.float64) if offset is None else target.to(torch.float64) - offset.to(torch.float64)
            xtx = x64.T @ x64 if xtx is None else xtx.addmm_(x64.T, x64)
            xty = x64.T @ y64 if xty is None else xty.addmm_(x64.T, y64)
        return xtx, xty

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for k in range(len(self)):
            yield self.chunk(k)


def block_stream(batches: list[Any], start: int, end: int, *, accurate: bool, device: str | torch.device,
                 chunk_tokens: int) -> ChunkedTokens:
    """The fit's rows of block ``[start, end)`` from sample batches, one part per batch:
    ``x = m_{s-1}`` and ``target = x_e − x_s + m_{s-1}``, or with ``accurate``
    ``target = x_e`` and ``offset = x_s − m_{s-1}`` (ReplaceMe eq. 7)."""

    def part(batch: Any) -> Part:
        def read() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            rows = lambda t: t[batch.mask].to(device, torch.float32)  # noqa: E731 - reads this batch only
            m, xs, xe = rows(batch.mlp[start - 1]), rows(batch.boundaries[start]), rows(batch.boundaries[end])
            return (m, xe, xs - m) if accurate else (m, xe - xs + m, None)

        return read

    return ChunkedTokens([part(b) for b in batches], [b.tokens for b in batches], device=device,
                         chunk_tokens=chunk_tokens)
