"""Data-parallel calibration with ``torch.distributed`` (``torchrun``).

Under ``torchrun --nproc_per_node K --no-python replaceme prune ...`` (or ``compare``)
every process loads the model and tokenises the calibration set, then:

1. each rank runs the calibration batches ``b`` with ``b % K == rank`` (a deterministic
   split: the held-out and sample choice depend only on the data and the seed, so they
   are the same on every rank);
2. the float64 Gram sums ``XᵀX``/``XᵀY`` are reduced to rank 0 alone, one matrix at a
   time, and dropped by the other ranks; the distance tables and counts (small) are
   all-reduced, so every rank can take part in a second pass chosen from them
   (:mod:`~replaceme.distributed.reduce`); the results equal one process's up to the
   order of the float64 additions;
3. the kept activation batches (the token sample of the cosine fit and LLM-Streamline's
   training pairs, and the held-out batches) are sent to rank 0 as tensors, in the
   one-process order, straight into its sample store, RAM or the memory-mapped spill
   (:mod:`~replaceme.distributed.sample`), so **rank 0 fits on the same sample** one
   process would use (no DDP: the fits are small next to the pass);
4. after the last pass and a barrier, ranks other than 0 leave (:class:`RankDone`, exit
   status 0): they write nothing, no cache entry, no comparison row. Rank 0 selects,
   solves, merges, evaluates and writes as a single process would.

All of it is one wrapper, :func:`shared_pass` (:mod:`~replaceme.distributed.shared`),
around the statistics pass (which itself knows nothing of processes: it runs the
batches it is given); orchestration calls it and :func:`writer_lock`, :func:`on_root`,
:func:`from_root`, :func:`skip_pass`, and never asks for a rank. The Python API
(:func:`replaceme.prune`, :func:`replaceme.compare.runner.run_comparison`) returns
``None`` on ranks other than 0 (:func:`root_result`); the CLI exits 0 there.

Healing (``--heal``) trains with torch's DistributedDataParallel instead:
:mod:`replaceme.distributed.ddp`.

Backends: gloo for a CPU model, NCCL for CUDA (each rank on ``cuda:LOCAL_RANK``). An
error on any rank during the pass is exchanged before the next collective, so every
rank stops with the same one-line error instead of waiting forever; a rank that dies
outright is torn down with the others by ``torchrun``.

Modules: :mod:`~replaceme.distributed.world` (the environment),
:mod:`~replaceme.distributed.group` (the process group's life),
:mod:`~replaceme.distributed.reduce` (sums), :mod:`~replaceme.distributed.sample`
(the sample to rank 0), :mod:`~replaceme.distributed.shared` (the shared pass).
"""

from __future__ import annotations

from replaceme.distributed.group import (
    PeerFailed,
    RankDone,
    abort,
    broadcast,
    check,
    from_root,
    init,
    join,
    joined,
    leave,
    on_root,
    run_checked,
    skip_pass,
    writer_lock,
)
from replaceme.distributed.reduce import REDUCED_FIELDS, all_reduce_, reduce_stats
from replaceme.distributed.sample import gather_sample
from replaceme.distributed.shared import root_result, shared_pass
from replaceme.distributed.world import World, device_name, world
from replaceme.errors import ReplacemeError

__all__ = [
    "REDUCED_FIELDS", "PeerFailed", "RankDone", "ReplacemeError", "World", "abort", "all_reduce_", "broadcast",
    "check", "device_name", "from_root", "gather_sample", "init", "join", "joined", "leave", "on_root",
    "reduce_stats", "root_result", "run_checked", "shared_pass", "skip_pass", "world", "writer_lock",
]
