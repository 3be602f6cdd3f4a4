"""The trained demo model shipped inside the package: checksums, recipe, loading, packaging."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from replaceme.demo import shipped, subject  # noqa: E402
from replaceme.demo.__main__ import main as demo_main  # noqa: E402
from replaceme.demo.train import Recipe, perplexity  # noqa: E402
from replaceme.errors import ReplacemeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_files_match_their_checksums():
    assert shipped.checksum_problems() == []
    sums = shipped.read_checksums()
    assert set(sums) == set(shipped.SHIPPED_FILES)
    # recomputed independently of the module's helper
    import hashlib

    data = (shipped.SHIPPED_DIR / "model.safetensors").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sums["model.safetensors"]
    assert 0.5e6 < len(data) < 10e6  # a few MB, not a toy and not a burden
    assert demo_main([]) == 0


@pytest.mark.slow
def test_shipped_weights_are_the_default_recipe_and_load():
    info = shipped.shipped_info()
    assert Recipe(**info["recipe"]) == Recipe()
    assert info["training"]["steps"] == info["training"]["planned_steps"] == Recipe().steps

    path = shipped.SHIPPED_DIR
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == Recipe().layers
    assert sum(p.numel() for p in model.parameters()) == info["training"]["parameters"]
    # the weights are the trained ones: their validation perplexity is the one recorded at training
    from replaceme.data.texts import load_texts

    docs = load_texts(str(path / subject.VALIDATION_FILE))
    assert len(docs) == Recipe().validation_docs
    assert perplexity(model, tokenizer, docs) == pytest.approx(info["training"]["validation_ppl"], rel=1e-4)


def test_demo_model_dir_uses_the_shipped_weights_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLACEME_CACHE", str(tmp_path / "cache"))

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped demo model was trained again")

    monkeypatch.setattr(subject, "build", no_build)
    assert subject.demo_model_dir() == shipped.SHIPPED_DIR
    from replaceme.loading import resolve_model_path

    assert resolve_model_path("demo") == str(shipped.SHIPPED_DIR)
    assert not (tmp_path / "cache").exists()  # nothing written


def test_a_damaged_copy_is_detected(tmp_path, monkeypatch):
    copy = tmp_path / "weights"
    shutil.copytree(shipped.SHIPPED_DIR, copy)
    assert shipped.checksum_problems(copy) == []
    blob = bytearray((copy / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(blob))
    (copy / "validation.txt").unlink()
    problems = shipped.checksum_problems(copy)
    assert problems == ["model.safetensors does not match its sha256", "validation.txt is missing"]
    monkeypatch.setattr(shipped, "SHIPPED_DIR", copy)
    with pytest.raises(ReplacemeError, match="damaged.*model.safetensors"):
        subject.demo_model_dir()


def test_install_writes_a_checkable_copy(tmp_path):
    sums = shipped.install(shipped.SHIPPED_DIR, tmp_path / "copy")
    assert sums == shipped.read_checksums()
    assert shipped.compare_weights(shipped.SHIPPED_DIR, tmp_path / "copy")["identical"]


@pytest.mark.slow
def test_a_non_editable_wheel_ships_the_weights(tmp_path):
    pytest.importorskip("setuptools")
    # build from a copy of the sources, so the build leaves nothing in the checkout
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("replaceme", "plugins"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("replaceme-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (*shipped.SHIPPED_FILES, shipped.CHECKSUM_FILE):
        assert f"replaceme/demo/weights/{name}" in names


def test_verify_says_ok_only_for_identical_weights():
    from replaceme.demo.__main__ import verdict

    same = {"weights": {"identical": True, "max_rel_diff": 0.0}, "validation_ppl_rel_diff": 0.0}
    drifted = {"weights": {"identical": False, "max_rel_diff": 1.19}, "validation_ppl_rel_diff": 0.001}
    off = {"weights": {"identical": False, "max_rel_diff": 1.19}, "validation_ppl_rel_diff": 0.2}
    assert verdict(same, 0.005).startswith("verify: OK")
    assert verdict(drifted, 0.005).startswith("verify: WEIGHTS DIFFER") and "1.19" in verdict(drifted, 0.005)
    assert "OK" not in verdict(drifted, 0.005) and verdict(off, 0.005).startswith("verify: FAILED")
    assert verdict({}, 0.005).startswith("verify: FAILED")
