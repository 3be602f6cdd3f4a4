"""Building and caching the demo model (with a tiny recipe, so it takes seconds)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from replaceme.demo import subject  # noqa: E402
from replaceme.demo.train import Recipe  # noqa: E402

TINY = Recipe(
    layers=2,
    hidden=32,
    heads=2,
    kv_heads=1,
    intermediate=64,
    seq_len=64,
    train_docs=24,
    calibration_docs=6,
    validation_docs=6,
    steps=3,
    batch_size=4,
    warmup_steps=1,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("REPLACEME_CACHE", str(root))
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    return root


def leftovers(root: Path) -> list[str]:
    """Temporary build folders still lying in the cache root."""
    return sorted(p.name for p in root.glob(".*.partial")) if root.exists() else []


def test_is_demo():
    assert subject.is_demo(None)
    assert subject.is_demo("")
    assert subject.is_demo("demo")
    assert subject.is_demo("DEMO")
    assert not subject.is_demo("./demo")
    assert not subject.is_demo("meta-llama/Llama-3.1-8B")
    assert subject.DEMO_NAME == "demo"


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("REPLACEME_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert subject.cache_root() == tmp_path / ".cache" / "replaceme"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert subject.cache_root() == tmp_path / "xdg" / "replaceme"
    monkeypatch.setenv("REPLACEME_CACHE", str(tmp_path / "rc"))
    assert subject.cache_root() == tmp_path / "rc"
    assert subject.cache_root(tmp_path / "given") == tmp_path / "given"


def test_recipe_key():
    default = subject.recipe_key()
    assert default == f"demo-v{subject.RECIPE_VERSION}"
    assert subject.recipe_key(Recipe()) == default
    tiny = subject.recipe_key(TINY)
    assert tiny.startswith(default + "-") and tiny == subject.recipe_key(Recipe(**TINY.as_dict()))
    assert subject.recipe_key(TINY.replace(seed=1)) != tiny


def test_default_recipe_is_deep_enough():
    recipe = Recipe()
    assert recipe.layers >= 8
    text = subject.describe()
    assert f"{recipe.layers} decoder" in text and "not" in text


def test_build_loads_with_auto_classes(cache):
    path = subject.demo_model_dir(recipe=TINY)
    assert path.parent == cache and path.name == subject.recipe_key(TINY)
    assert subject.is_complete(path) and not leftovers(cache)
    assert (path / "model.safetensors").is_file()

    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == TINY.layers
    assert model.config.vocab_size == len(tokenizer)
    batch = tokenizer(["alice runs .", "story : bob is the king"], return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0].item() == tokenizer.bos_token_id
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, len(tokenizer))

    files = subject.demo_data_files(path)
    from replaceme.data.texts import load_texts

    calibration = load_texts(str(files["calibration"]))
    validation = load_texts(str(files["validation"]))
    assert len(calibration) == TINY.calibration_docs and len(validation) == TINY.validation_docs
    assert not set(calibration) & set(validation)

    info = subject.demo_info(path)
    assert info["recipe"] == TINY.as_dict()
    assert info["training"]["steps"] == TINY.steps
    assert info["training"]["validation_ppl"] > 1
    assert "demo model" in (path / "README.md").read_text()


def test_cache_is_reused(cache, monkeypatch):
    path = subject.demo_model_dir(recipe=TINY)
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(subject, "build", no_build)
    assert subject.demo_model_dir(recipe=TINY) == path
    assert subject.demo_model_dir(cache_dir=cache, **{k: v for k, v in TINY.as_dict().items()}) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_build_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    from safetensors.torch import load_file

    first = subject.build(tmp_path / "a", TINY)
    second = subject.build(tmp_path / "b", TINY)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)
    assert first["training"]["train_loss"] == second["training"]["train_loss"]
    for name in ("calibration.txt", "validation.txt", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = subject.build(tmp_path / "c", TINY.replace(seed=1))
    c = load_file(tmp_path / "c" / "model.safetensors")
    assert not all(a[k].equal(c[k]) for k in a)
    assert other["training"]["steps"] == TINY.steps


def test_interrupted_build_leaves_nothing(cache, monkeypatch):
    # fail after the model and tokenizer are written into the temporary folder
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(subject, "describe", boom)
    with pytest.raises(KeyboardInterrupt):
        subject.demo_model_dir(recipe=TINY)
    assert not (cache / subject.recipe_key(TINY)).exists()
    assert not leftovers(cache)

    monkeypatch.undo()
    monkeypatch.setenv("REPLACEME_CACHE", str(cache))
    monkeypatch.setenv("REPLACEME_NO_PROGRESS", "1")
    assert subject.is_complete(subject.demo_model_dir(recipe=TINY))


def test_stale_temporary_folders_are_removed(cache):
    key = subject.recipe_key(TINY)
    stale = cache / f".{key}.killed.partial"
    (stale / "junk").mkdir(parents=True)
    subject.demo_model_dir(recipe=TINY)
    assert not stale.exists() and not leftovers(cache)


def test_rebuild_replaces_the_cache(cache):
    path = subject.demo_model_dir(recipe=TINY)
    (path / "marker").write_text("old build")
    again = subject.demo_model_dir(recipe=TINY, rebuild=True)
    assert again == path and subject.is_complete(path)
    assert not (path / "marker").exists() and not leftovers(cache)


def test_incomplete_folder_is_rebuilt(cache):
    path = cache / subject.recipe_key(TINY)
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")  # no demo.json: not a finished build
    assert subject.demo_model_dir(recipe=TINY) == path
    assert subject.is_complete(path)


def test_concurrent_builds_build_once(cache, monkeypatch):
    builds = []
    real_build = subject.build

    def counting_build(*args, **kwargs):
        builds.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(subject, "build", counting_build)
    results, errors = [], []

    def worker():
        try:
            results.append(subject.demo_model_dir(recipe=TINY))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 2 and results[0] == results[1]
    assert len(builds) == 1


def test_unwritable_cache_is_a_user_error(tmp_path, monkeypatch):
    from replaceme.errors import ReplacemeError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("REPLACEME_CACHE", str(blocker / "cache"))
    with pytest.raises(ReplacemeError, match="REPLACEME_CACHE"):
        subject.demo_model_dir(recipe=TINY)
