"""Every registered method on every supported architecture keeps the contract of
:func:`replaceme.testing.check_method_contract`: the layer count drops as asked,
the config follows, logits keep their shape, generation with the KV cache works,
save → from_pretrained is identical, and the result is deterministic under a seed.
A method may refuse an architecture only where it cannot be expressed (a dense
map behind a post-norm), and then in one line before any work."""

from __future__ import annotations

import pytest
from tiny import ARCHS, POST_NORM_ARCHS, arch_params, tiny_model

from replaceme.errors import ReplacemeError
from replaceme.methods import resolve_method
from replaceme.registry import adapter_for, registry
from replaceme.testing import check_method_contract

METHODS = sorted(registry().methods)
#: small but real settings so every method runs in a second or two
FAST = {"replaceme-cosine": {"epochs": 2}, "llm-streamline": {"token_budget": 2000}}


@pytest.mark.parametrize("arch", arch_params(ARCHS))
@pytest.mark.parametrize("method", METHODS)
def test_method_contract(method, arch, tmp_path):
    try:
        resolve_method(method, FAST.get(method)).check_model(adapter_for(tiny_model(arch)))
    except ReplacemeError as exc:  # only a method that cannot be expressed behind a post-norm may refuse
        assert arch in POST_NORM_ARCHS and "post-norm" in str(exc) and "\n" not in str(exc), str(exc)
        return
    # determinism is a property of the method; once per method is enough
    check_method_contract(method, arch, tmp_path=tmp_path, options=FAST.get(method), check_determinism=arch == "llama")
