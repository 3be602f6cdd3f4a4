"""The fake plugin's own test, as a plugin author writes it: the public contract
helper of replaceme, on a few architectures."""

from __future__ import annotations

import importlib.metadata

import pytest

from replaceme.plugin import check_method_contract

try:
    importlib.metadata.version("replaceme-fake")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("tests/fake_plugin is not installed (CI installs it)", allow_module_level=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "olmo2"])
def test_fake_first_keeps_the_contract(arch, tmp_path):
    result = check_method_contract("fake-first", arch, tmp_path=tmp_path, options={"offset": 2})
    assert [(b.start, b.end) for b in result.plan.blocks] == [(2, 4)]
