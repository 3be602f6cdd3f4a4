"""What two gloo processes send each other after a shared pass: the activation sample
reaches rank 0 as tensors (every dtype, in the one-process order, into RAM or the
memory-mapped spill) and rank 1 keeps none of it; Gram sums are summed on rank 0 and
dropped on rank 1, tables are averaged on both."""

from __future__ import annotations

import os
import socket

import pytest
import torch

from replaceme.distributed.sample import describe, flatten, unflatten
from replaceme.stats.store import ActivationSample, ActivationStats, BatchActivations, GramKey, GramSums

TRAIN, HOLDOUT = [0, 2, 3, 5], [1, 4]  # positions in the whole pass; rank r ran those with p % 2 == r


def make_batch(position: int) -> BatchActivations:
    """The batch a pass keeps at ``position`` (the same on whichever rank ran it)."""
    g = torch.Generator().manual_seed(position)
    rows, length = 2, 3 + position % 2  # batches differ in shape
    mask = torch.rand(rows, length, generator=g) > 0.3
    cos, sin = torch.rand(rows, length, 4, generator=g), torch.rand(rows, length, 4, generator=g)
    return BatchActivations(
        mask=mask, input_ids=torch.randint(0, 100, (rows, length), generator=g),
        boundaries={0: torch.randn(rows, length, 8, generator=g).to(torch.bfloat16),
                    2: torch.randn(rows, length, 8, generator=g)},
        mlp={1: torch.randn(rows, length, 8, generator=g, dtype=torch.float64)},
        layer_kwargs={1: {"position_embeddings": (cos, sin), "flag": True, "none": None, "empty": torch.zeros(0)}})


def assert_same_batch(got: BatchActivations, want: BatchActivations) -> None:
    got_tensors, want_tensors = [], []
    got_skeleton, want_skeleton = (flatten(vars(got), got_tensors), flatten(vars(want), want_tensors))
    assert got_skeleton == want_skeleton  # same structure, shapes, dtypes and non-tensor values
    for a, b in zip(got_tensors, want_tensors):
        assert a.device.type == "cpu" and a.dtype == b.dtype and torch.equal(a, b)


def make_stats(rank: int) -> ActivationStats:
    """A rank's statistics: rank r's sums are (r + 1) × the same matrices; one XᵀX shared by two blocks."""
    g = torch.Generator().manual_seed(7)
    xtx, xty1, xty2 = (torch.randn(8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    f = rank + 1
    xtx = xtx * f
    gram = {GramKey(1, 2): GramSums(xtx, xty1 * f, 2.0 * f, 10 * f), GramKey(1, 3): GramSums(xtx, xty2 * f, 3.0 * f, 10 * f)}
    sequences, tokens = 3 + rank, 30 + 5 * rank
    return ActivationStats(num_layers=4, hidden_size=8, angular={1: torch.full((4,), 0.1 * f, dtype=torch.float64)},
                           token_cosine={1: torch.full((4,), 0.5 * f, dtype=torch.float64)}, gram=gram,
                           sequences=sequences, tokens=tokens, seconds=1.0 + rank)


def _rank(rank: int, port: int, spill_parent: str) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from replaceme import distributed
    from replaceme.distributed.reduce import reduce_stats
    from replaceme.distributed.sample import gather_sample
    from replaceme.stats.spill import Spill

    distributed.init("cpu")
    try:
        for use_spill in (False, True):
            train = [p for p in reversed(TRAIN) if p % 2 == rank]  # recorded out of order on purpose
            held = [p for p in HOLDOUT if p % 2 == rank]
            mine = ActivationSample(train=[make_batch(p) for p in train], holdout=[make_batch(p) for p in held],
                                    train_positions=train, holdout_positions=held)
            spill = Spill(spill_parent) if use_spill and rank == 0 else None
            got = gather_sample(mine, spill)
            if rank:
                assert got.train == [] == got.holdout and mine.train == [] == mine.holdout  # nothing kept
                continue
            assert got.train_positions == TRAIN and got.holdout_positions == HOLDOUT
            for batch, p in zip(got.train + got.holdout, TRAIN + HOLDOUT):
                assert_same_batch(batch, make_batch(p))
            if spill is not None:  # rank 1's activations (boundaries, mlp) were written to the spill
                sent = [make_batch(p) for p in TRAIN + HOLDOUT if p % 2 == 1]
                assert spill.bytes_written == sum(b.nbytes() for b in sent) > 0
                spill.close()
        stats = make_stats(rank)
        reduce_stats(stats)
        assert stats.sequences == 7 and stats.tokens == 65 and stats.seconds == 2.0
        torch.testing.assert_close(stats.angular[1], torch.full((4,), (0.1 * 3 + 0.2 * 4) / 7, dtype=torch.float64))
        torch.testing.assert_close(stats.token_cosine[1], torch.full((4,), (0.5 * 30 + 1.0 * 35) / 65, dtype=torch.float64))
        if rank:
            assert stats.gram == {}
        else:
            one, two = make_stats(0), make_stats(1)
            for key in one.gram:
                torch.testing.assert_close(stats.gram[key].xtx, one.gram[key].xtx + two.gram[key].xtx, rtol=0, atol=1e-12)
                torch.testing.assert_close(stats.gram[key].xty, one.gram[key].xty + two.gram[key].xty, rtol=0, atol=1e-12)
                assert stats.gram[key].yty == one.gram[key].yty * 3 and stats.gram[key].tokens == 30
            assert stats.gram[GramKey(1, 2)].xtx is stats.gram[GramKey(1, 3)].xtx  # still one shared tensor
    finally:
        distributed.abort()


def test_flatten_round_trip():
    batch = make_batch(3)
    skeleton, tensors = describe(batch)
    rebuilt = BatchActivations(**{k: unflatten(v, lambda slot: tensors[slot.index]) for k, v in skeleton.items()})
    assert_same_batch(rebuilt, batch)
    assert len(tensors) == 8  # mask, ids, 2 boundaries, 1 mlp, cos, sin, the empty one


@pytest.mark.slow
def test_sample_and_sums_travel_to_rank_0(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
