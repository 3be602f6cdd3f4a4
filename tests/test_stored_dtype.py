"""A checkpoint loads in the dtype it is stored in unless ``--dtype`` says otherwise."""

from __future__ import annotations

import torch
from tiny import tiny_model

from replaceme.loading import load_model, stored_dtype
from replaceme.offload import load_offloaded
from replaceme.registry import adapter_for


def _save(path, tokenizer, dtype):
    tiny_model("llama").to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_stored_dtype_is_read_from_the_safetensors_header(tmp_path, tokenizer):
    assert stored_dtype(_save(tmp_path / "bf16", tokenizer, torch.bfloat16)) == "bfloat16"
    assert stored_dtype(_save(tmp_path / "f16", tokenizer, torch.float16)) == "float16"
    assert stored_dtype(_save(tmp_path / "f32", tokenizer, torch.float32)) == "float32"
    assert stored_dtype(tmp_path / "absent") is None
    assert stored_dtype("some-org/some-model") is None


def test_config_dtype_when_there_is_no_safetensors(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "torch_dtype": "bfloat16"}')
    assert stored_dtype(tmp_path) == "bfloat16"
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert stored_dtype(tmp_path) is None


def test_a_bf16_checkpoint_stays_bf16_by_default(tmp_path, tokenizer):
    path = _save(tmp_path / "bf16", tokenizer, torch.bfloat16)
    model, _ = load_model(str(path), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    reference = tiny_model("llama").to(torch.bfloat16)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name  # the stored values, not a round trip through float32
    asked, _ = load_model(str(path), device="cpu", dtype="float32")
    assert {p.dtype for p in asked.parameters()} == {torch.float32}
    offloaded, _ = load_offloaded(str(path), device="cpu", dtype="auto", trust_remote_code=False, adapter_for=adapter_for)
    assert offloaded.dtype == torch.bfloat16
