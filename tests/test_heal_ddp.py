"""Healing under torchrun: 2 gloo processes with DistributedDataParallel end with the
weights of 1 process trained on the same global batches (float rounding apart), and
gradient accumulation gives the update of the whole batch at once."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from tiny import tiny_model

from replaceme.healer import HealOptions
from replaceme.healing.data import HealBatches
from replaceme.healing.loop import Loop

OPTS = dict(steps=3, batch_size=4, seq_len=12, heldout=2, eval_every=2, warmup=1, lr=1e-2, checkpoint_every=0)


def _data() -> HealBatches:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 100, (10, 12), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[2, 7:] = False  # pads, so that processes see different token counts
    mask[5, 4:] = False
    return HealBatches(ids[:8], mask[:8], ids[8:], mask[8:], {})


def _train(micro_batch: int) -> dict[str, torch.Tensor]:
    teacher = tiny_model("llama", layers=3)
    student = tiny_model("llama", layers=3, seed=1).train()
    for p in student.parameters():
        p.requires_grad_(True)
    Loop(student, teacher, _data(), HealOptions(**OPTS, micro_batch=micro_batch), seed=0).run()
    return {n: t.detach().clone() for n, t in student.state_dict().items()}


def _worker(rank: int, port: int, out: str) -> None:
    from replaceme import distributed

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), REPLACEME_NO_PROGRESS="1")
    distributed.init("cpu")
    weights = _train(micro_batch=1)  # 2 rows per process per step, accumulated one by one
    torch.save(weights, Path(out) / f"rank{rank}.pt")
    try:
        distributed.leave()
    except distributed.RankDone:  # rank 1's normal end
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradient_accumulation_equals_the_whole_batch():
    whole, accumulated = _train(micro_batch=0), _train(micro_batch=1)
    for name, t in whole.items():
        torch.testing.assert_close(accumulated[name], t, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_gloo_processes_heal_what_one_does(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    one = _train(micro_batch=0)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, t in one.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # DDP keeps the processes identical
        torch.testing.assert_close(ranks[0][name], t, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(t, tiny_model("llama", layers=3, seed=1).state_dict()[n]) for n, t in one.items())


PRUNE_HEAL = {"heal.steps": 3, "heal.batch_size": 4, "heal.seq_len": 16, "heal.heldout": 2, "heal.eval_every": 0,
              "heal.lr": 1e-2}


def _prune_heal(model_dir: str, calib: str) -> dict[str, torch.Tensor] | None:
    import replaceme
    from replaceme.calibration import CalibrationSpec

    spec = CalibrationSpec(calib, samples=16, max_length=32, batch_size=4)
    result = replaceme.prune(model_dir, method="replaceme-lstsq", layers=1, calibration=spec, heal="full",
                             options=dict(PRUNE_HEAL), use_cache=False)
    return None if result is None else {n: t.detach().clone() for n, t in result.model.state_dict().items()}


def _prune_worker(rank: int, port: int, model_dir: str, calib: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), REPLACEME_NO_PROGRESS="1")
    weights = _prune_heal(model_dir, calib)
    torch.save({"weights": weights}, Path(out) / f"prune{rank}.pt")


@pytest.mark.slow
def test_prune_heal_under_two_processes_equals_one(tmp_path, tokenizer):
    """``torchrun ... replaceme prune --heal``: every process stays after the pass and trains
    (DDP); rank 0 returns the healed model, the other rank None."""
    import torch.multiprocessing as mp
    from tiny import calibration_text

    model_dir = tmp_path / "tiny"
    tiny_model("llama", layers=4).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    calib = calibration_text(tmp_path / "calib.txt", records=40)
    mp.spawn(_prune_worker, args=(_free_port(), str(model_dir), str(calib), str(tmp_path)), nprocs=2, join=True)
    one = _prune_heal(str(model_dir), str(calib))
    two = [torch.load(tmp_path / f"prune{r}.pt", weights_only=True)["weights"] for r in range(2)]
    assert two[1] is None and two[0] is not None
    for name, t in one.items():
        torch.testing.assert_close(two[0][name], t, rtol=1e-4, atol=1e-5, msg=name)


def test_early_stop_keeps_the_best_heldout_weights():
    teacher = tiny_model("llama", layers=3)
    student = tiny_model("llama", layers=3, seed=1).train()
    for p in student.parameters():
        p.requires_grad_(True)
    opts = HealOptions(**{**OPTS, "steps": 30, "eval_every": 1, "lr": 0.5, "warmup": 0}, patience=1)
    loop = Loop(student, teacher, _data(), opts, seed=0)
    state = loop.run()
    assert state.stopped_early and state.step < 30  # a step that did not improve the held-out loss ended it
    assert state.heldout_curve[-1][1] > state.best
    assert loop.heldout_loss() == pytest.approx(state.best, rel=1e-6)  # the best weights were put back
