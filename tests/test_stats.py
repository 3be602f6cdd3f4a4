"""The shared pass against direct computations from the unpruned model."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from replaceme.registry import adapter_for
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.stats import StatsRequest, collect_stats
from replaceme.stats.store import GramKey


def direct_states(model, adapter, ids, mask):
    """x_0..x_L (x_L before the final norm) and m_0..m_{L-1}, via plain hooks."""
    layers = adapter.layers(model)
    xs, ms = {}, {}
    hooks = [layers[i].register_forward_pre_hook(lambda mod, a, k, i=i: xs.__setitem__(i, (a[0] if a else k["hidden_states"])), with_kwargs=True) for i in range(len(layers))]
    hooks.append(layers[-1].register_forward_hook(lambda mod, a, out: xs.__setitem__(len(layers), out[0] if isinstance(out, tuple) else out)))
    hooks += [adapter.mlp_out(model, i).register_forward_hook(lambda mod, a, out, i=i: ms.__setitem__(i, out)) for i in range(len(layers))]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
    for h in hooks:
        h.remove()
    return xs, ms


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_distances_and_gram_match_direct_computation(arch, tokenizer, calib_file):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    L = adapter.num_layers(model)
    calib = build_calibration(CalibrationSpec(str(calib_file), samples=12, max_length=48, batch_size=4), tokenizer)
    assert any((~m).any() for m in calib.masks), "the test needs padded batches"
    request = StatsRequest(block_sizes={1, 2, 3}, gram_blocks={(1, 3), (2, 5)}, gram_with_pad=True)
    stats = collect_stats(model, adapter, calib, request)

    # hidden_states from HF agree with our pre-norm boundaries for j < L
    ids, mask = calib.input_ids[0], calib.masks[0]
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True, use_cache=False).hidden_states
    xs, _ = direct_states(model, adapter, ids, mask)
    for j in range(L):
        torch.testing.assert_close(xs[j], hf[j])

    ang = {n: torch.zeros(L - n + 1, dtype=torch.float64) for n in (1, 2, 3)}
    cos = {n: torch.zeros(L - n + 1, dtype=torch.float64) for n in (1, 2, 3)}
    gram = {k: [0, 0, 0.0] for k in [(1, 3, False), (2, 5, False), (1, 3, True), (2, 5, True)]}
    seqs = toks = 0
    for ids, mask in zip(calib.input_ids, calib.masks):
        xs, ms = direct_states(model, adapter, ids, mask)
        xs = {k: v.double() for k, v in xs.items()}
        for row in range(ids.shape[0]):
            last = int(mask[row].nonzero().max())
            for n in ang:
                for s in range(L - n + 1):
                    c = torch.nn.functional.cosine_similarity(xs[s][row, last], xs[s + n][row, last], dim=0)
                    ang[n][s] += math.acos(max(-1.0, min(1.0, float(c)))) / math.pi
        for n in cos:
            for s in range(L - n + 1):
                cos[n][s] += torch.nn.functional.cosine_similarity(xs[s], xs[s + n], dim=-1)[mask].sum()
        for (s, e, with_pad), acc in gram.items():
            sel = torch.ones_like(mask) if with_pad else mask
            X = ms[s - 1].double()[sel]
            Y = xs[e][sel] - xs[s][sel] + X
            acc[0] = acc[0] + X.T @ X
            acc[1] = acc[1] + X.T @ Y
            acc[2] += float((Y * Y).sum())
        seqs += ids.shape[0]
        toks += int(mask.sum())
    for n in ang:
        torch.testing.assert_close(stats.angular[n], ang[n] / seqs, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(stats.token_cosine[n], cos[n] / toks, rtol=1e-9, atol=1e-9)
    for (s, e, with_pad), (xtx, xty, yty) in gram.items():
        g = stats.gram[GramKey(s, e, with_pad)]
        torch.testing.assert_close(g.xtx, xtx, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(g.xty, xty, rtol=1e-9, atol=1e-9)
        assert g.yty == pytest.approx(yty, rel=1e-9)
    assert stats.tokens == toks and stats.sequences == seqs


def test_pad_tokens_do_not_change_statistics(tokenizer, calib_file):
    """Batching with padding gives the same statistics as one sequence per batch."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    request = StatsRequest(block_sizes={1, 2}, gram_blocks={(2, 4)})
    spec = dict(source=str(calib_file), samples=10, max_length=40)
    calib = {b: build_calibration(CalibrationSpec(**spec, batch_size=b), tokenizer) for b in (5, 1)}
    padded, single = (collect_stats(model, adapter, calib[b], request, holdout_tokens=0) for b in (5, 1))
    for n in (1, 2):
        torch.testing.assert_close(padded.angular[n], single.angular[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(padded.token_cosine[n], single.token_cosine[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded.gram[GramKey(2, 4)].xtx, single.gram[GramKey(2, 4)].xtx, rtol=1e-4, atol=1e-6)


def test_statistics_are_cached_on_disk(tokenizer, calib_file):
    from replaceme.pipeline import gather_stats

    model = tiny_model("llama")
    adapter = adapter_for(model)
    calib = build_calibration(CalibrationSpec(str(calib_file), samples=8, max_length=32, batch_size=4), tokenizer)
    request = StatsRequest(block_sizes={1}, gram_blocks={(1, 2)}, sample_tokens=50, sample_boundaries={1, 2}, sample_mlp={0})
    first = gather_stats(model, adapter, calib, request)

    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))  # counts forward passes
    second = gather_stats(model, adapter, calib, request)
    handle.remove()
    assert not calls, "the pass ran again although its inputs were cached"
    torch.testing.assert_close(second.angular[1], first.angular[1])
    torch.testing.assert_close(second.gram[GramKey(1, 2)].xty, first.gram[GramKey(1, 2)].xty)
    assert len(second.sample.train) == len(first.sample.train) > 0
    torch.testing.assert_close(second.sample.train[0].boundaries[2], first.sample.train[0].boundaries[2])


def test_non_finite_activations_are_reported(tokenizer, calib_file):
    from replaceme.errors import ReplacemeError

    model = tiny_model("llama")
    with torch.no_grad():
        adapter_for(model).mlp_out(model, 1).weight.fill_(float("inf"))
    calib = build_calibration(CalibrationSpec(str(calib_file), samples=4, max_length=16, batch_size=4), tokenizer)
    with pytest.raises(ReplacemeError, match=r"layer 1 produced non-finite hidden states \(NaN/Inf\)"):
        collect_stats(model, adapter_for(model), calib, StatsRequest(block_sizes={1}))


@pytest.mark.parametrize("hidden, block", [(40, 16), (48, 16), (10, 16)])
def test_upper_block_gram_equals_the_full_product(hidden, block):
    """XᵀX from the blocks on and above the diagonal, mirrored once at the end, equals
    the full float64 product (a few uneven batches; a last block narrower than the rest)."""
    from replaceme.stats.collect import add_upper_gram, mirror_upper_gram

    gen = torch.Generator().manual_seed(hidden)
    batches = [torch.randn(rows, hidden, generator=gen, dtype=torch.float64) for rows in (7, 30, 1)]
    xtx = torch.zeros(hidden, hidden, dtype=torch.float64)
    for X in batches:
        add_upper_gram(xtx, X, block)
    mirror_upper_gram(xtx, block)
    full = sum(X.T @ X for X in batches)
    torch.testing.assert_close(xtx, full, rtol=1e-13, atol=1e-12)
