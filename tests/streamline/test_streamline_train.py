"""The training math of LLM-Streamline alone (replaceme_streamline.train):
tensors and modules in, tensors and modules out; no model, no statistics pass."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from replaceme_streamline.train import (
    Pair,
    TrainSettings,
    evaluate_mse,
    identity_mse,
    lr_at,
    micro_batches,
    train_replacement,
)

CONFIG = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=128, attn_implementation="sdpa")


def _layer(index: int, seed: int) -> LlamaDecoderLayer:
    torch.manual_seed(seed)
    layer = LlamaDecoderLayer(CONFIG, index)
    with torch.no_grad():  # HF leaves init to the model; give the layer a non-trivial, seeded one
        for name, p in layer.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1 if "norm" in name else 0.2)
    return layer.eval()


@torch.no_grad()
def _pairs(teacher: list[LlamaDecoderLayer], batches: int, seed: int, batch: int = 4, length: int = 12) -> list[Pair]:
    """x random, y = teacher layers applied in turn; the last rows are padded."""
    gen = torch.Generator().manual_seed(seed)
    rotary = LlamaRotaryEmbedding(CONFIG)
    out = []
    for _ in range(batches):
        x = torch.randn(batch, length, CONFIG.hidden_size, generator=gen)
        mask = torch.ones(batch, length, dtype=torch.bool)
        mask[-1, length // 2 :] = False
        kwargs = {"position_embeddings": rotary(x, torch.arange(length)[None])}
        y = x
        for layer in teacher:
            y = layer(y, **kwargs)
        out.append(Pair(x, y, mask, kwargs))
    return out


@pytest.fixture(scope="module")
def problem():
    """Teacher = layers 0 and 1 (a window of 2); student starts as a copy of layer 0."""
    teacher = [_layer(0, 1), _layer(1, 2)]
    return teacher, _pairs(teacher, 12, seed=3), _pairs(teacher, 3, seed=4)


SETTINGS = TrainSettings(epochs=3, lr=3e-3, min_lr=3e-4)


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    s = TrainSettings(lr=1.0, min_lr=0.1, warmup=0.1)
    lrs = [lr_at(i, 100, s) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_mse_counts_only_non_pad_tokens():
    x, y = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    y[0, 3] = 100.0  # a pad position: must not count
    mask = torch.tensor([[True, True, True, False]])
    assert identity_mse([Pair(x, y, mask)]) == 1.0
    identity = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.eye_(identity.weight)
    assert evaluate_mse(identity, [Pair(x, y, mask)], torch.device("cpu")) == 1.0


def test_micro_batches_split_batch_tensors_and_keep_broadcast_ones(problem):
    _, train, _ = problem
    parts = micro_batches(train[0], 3)
    assert [p.x.shape[0] for p in parts] == [3, 1]
    cos, _ = parts[1].kwargs["position_embeddings"]
    assert cos.shape[0] == 1  # broadcast over the batch: kept whole
    assert torch.equal(torch.cat([p.mask for p in parts]), train[0].mask)


def test_micro_batching_gives_the_same_training(problem):
    teacher, train, val = problem
    settings = TrainSettings(epochs=1, lr=3e-3)
    whole, _ = train_replacement(copy.deepcopy(teacher[0]), train[:3], val, settings)
    micro, _ = train_replacement(copy.deepcopy(teacher[0]), train[:3], val, TrainSettings(epochs=1, lr=3e-3, micro_batch=1))
    for a, b in zip(whole.parameters(), micro.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_lowers_the_loss_and_beats_init_and_plain_removal(problem):
    teacher, train, val = problem
    module, report = train_replacement(copy.deepcopy(teacher[0]), train, val, SETTINGS)
    first, last = sum(report.train_losses[:4]) / 4, sum(report.train_losses[-4:]) / 4
    assert last < 0.9 * first
    assert report.improved and report.val_best < report.val_init
    assert report.val_best < identity_mse(val)
    assert evaluate_mse(module, val, torch.device("cpu")) == pytest.approx(report.val_best)
    assert report.steps == SETTINGS.epochs * len(train)
    assert [s for s, _ in report.validation] == [0, 12, 24, 36]


def test_training_is_deterministic_under_a_seed(problem):
    teacher, train, val = problem
    a, _ = train_replacement(copy.deepcopy(teacher[0]), train, val, SETTINGS)
    b, _ = train_replacement(copy.deepcopy(teacher[0]), train, val, SETTINGS)
    c, _ = train_replacement(copy.deepcopy(teacher[0]), train, val, TrainSettings(epochs=3, lr=3e-3, min_lr=3e-4, seed=1))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


def test_frozen_parameters_stay_put(problem):
    teacher, train, val = problem
    student = copy.deepcopy(teacher[0])
    student.self_attn.requires_grad_(False)
    before = copy.deepcopy(student.self_attn.state_dict())
    trained, _ = train_replacement(student, train[:2], val, TrainSettings(weight_decay=0.1, lr=1e-2))
    for key, value in trained.self_attn.state_dict().items():
        assert torch.equal(value, before[key])


def test_keeps_the_initial_weights_when_validation_never_improves(problem, caplog):
    teacher, train, _ = problem
    student = copy.deepcopy(teacher[0])
    # validation targets are the student's own outputs: MSE 0 at init, worse after any update
    perfect = _pairs([teacher[0]], 2, seed=5)
    initial = copy.deepcopy(student.state_dict())
    with caplog.at_level(logging.WARNING, logger="replaceme_streamline.train"):
        trained, report = train_replacement(student, train[:4], perfect, TrainSettings(lr=1e-2))
    assert not report.improved and report.best_step == 0 and report.val_init == pytest.approx(0.0, abs=1e-10)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, initial[key])
    assert "never improved" in caplog.text


def test_trains_in_float32_from_bfloat16_inputs(problem):
    teacher, train, val = problem
    low = [Pair(p.x.bfloat16(), p.y.bfloat16(), p.mask, p.kwargs) for p in train[:2]]
    module, report = train_replacement(copy.deepcopy(teacher[0]).bfloat16(), low, val, TrainSettings())
    assert next(module.parameters()).dtype == torch.float32
    assert report.steps == 2
