"""Fidelity to the ReplaceMe reference (github.com/mts-ai/ReplaceMe): ``--holdout-fraction 0``
and reference ``--config`` files give the reference's LSTSQ T.

The truth here is computed independently of our statistics pass: Hugging Face's
own ``output_hidden_states`` plus a forward hook on the MLP, in float64, as the
reference's ``lstsq.py`` does.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny import tiny_model

import replaceme
from replaceme.calibration import CalibrationSpec, build_calibration
from replaceme.cli import cli as main
from replaceme.data.texts import load_texts


def _direct_statistics(model, batches, s: int, e: int, *, with_pads: bool):
    """XᵀX, XᵀY for block [s, e) straight from ``output_hidden_states`` and an MLP hook.

    X = m_{s-1} (layer s-1's MLP output), Y = x_e − x_s + m_{s-1}, float64; only
    non-pad tokens unless ``with_pads`` (the reference keeps every position).
    ``batches`` is a list of (input_ids, attention_mask).
    """
    captured = {}
    handle = model.model.layers[s - 1].mlp.register_forward_hook(lambda mod, inp, out: captured.update(m=out))
    xtx = torch.zeros(model.config.hidden_size, model.config.hidden_size, dtype=torch.float64)
    xty = torch.zeros_like(xtx)
    try:
        with torch.no_grad():
            for ids, mask in batches:
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                hs = out.hidden_states  # hs[j] = x_j (input of layer j); hs[L] is post-norm
                keep = torch.ones_like(mask, dtype=torch.bool) if with_pads else mask.bool()
                x = captured["m"][keep].double()
                y = hs[e][keep].double() - hs[s][keep].double() + x
                xtx += x.T @ x
                xty += x.T @ y
    finally:
        handle.remove()
    return xtx, xty


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --------------------------------------------------------------------------- --holdout-fraction


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_holdout_fraction_decides_which_batches_enter_the_lstsq_sums(tokenizer, calib_file, fraction):
    """With 0 every non-pad token of every batch enters XᵀX, XᵀY; with 0.25 a quarter of the batches stay out."""
    model = tiny_model("llama", layers=6)
    spec = CalibrationSpec(str(calib_file), samples=40, max_length=48, batch_size=4, holdout_fraction=fraction)
    calib = build_calibration(spec, tokenizer)
    assert calib.num_batches == 10 and any(not bool(m.all()) for m in calib.masks)  # pads present
    result = replaceme.prune(copy.deepcopy(model), method="replaceme-lstsq", layers=2, calibration=spec,
                             tokenizer=tokenizer, selector="range", start=2)
    (comp,) = result.outcome.compensations
    s, e = comp.block.start, comp.block.end
    from replaceme.stats.collect import split_batches

    holdout, _ = split_batches(calib, 0, 8192, spec.seed, holdout_fraction=fraction)
    assert len(holdout) == math.floor(calib.num_batches * fraction)
    batches = [(calib.input_ids[b], calib.masks[b].long()) for b in range(calib.num_batches) if b not in holdout]
    xtx, xty = _direct_statistics(model, batches, s, e, with_pads=False)
    truth = torch.linalg.lstsq(xtx, xty).solution  # XᵀX T = XᵀY, solved without an inverse
    assert comp.diagnostics["tokens"] == sum(int(m.sum()) for _, m in batches)
    assert _rel(comp.transform, truth) < 1e-8
    assert comp.diagnostics["heldout_tokens"] == sum(int(calib.masks[b].sum()) for b in holdout)


def test_holdout_fraction_is_checked_and_reaches_every_command(tokenizer, calib_file):
    from replaceme.errors import ReplacemeError

    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ReplacemeError, match="holdout-fraction"):
            CalibrationSpec("x.txt", holdout_fraction=bad)
    for command in ("prune", "compare", "distances"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--holdout-fraction" in result.output, command
    result = CliRunner().invoke(main, ["distances", "x", "-n", "1", "--calib", "c.txt", "--holdout-fraction", "1.5"])
    assert result.exit_code != 0 and "holdout-fraction" in result.output


def test_file_order_takes_the_first_records_and_drops_a_short_last_batch(tokenizer, calib_file):
    records = load_texts(str(calib_file))
    spec = CalibrationSpec(str(calib_file), samples=11, max_length=48, batch_size=4, order="file", drop_last=True)
    calib = build_calibration(spec, tokenizer)
    assert calib.num_batches == 2  # 11 records: two full batches, the last 3 records dropped
    for b in range(2):
        for row in range(4):
            want = tokenizer(records[4 * b + row], truncation=True, max_length=48)["input_ids"]
            got = calib.input_ids[b][row][calib.masks[b][row]].tolist()
            assert got == want
    shuffled = build_calibration(CalibrationSpec(str(calib_file), samples=11, max_length=48, batch_size=4), tokenizer)
    assert shuffled.num_batches == 3


# --------------------------------------------------------------------------- reference configs


def _reference_T(model, tokenizer, records, *, layers_to_skip, batch_size, max_length, dataset_size):
    """The reference's pipeline, re-implemented from its code (distance.py, utils.py, lstsq.py).

    Data: the first ``dataset_size`` records, ``DataLoader(batch_size, shuffle=False,
    drop_last=True)``, each batch tokenised with ``padding="longest", truncation=True``
    (pad = eos when the tokenizer has none). Selection: angular distance of
    ``hidden_states[1:][l]`` and ``[l + n]`` at the last non-pad token, the batch
    means averaged, smallest wins, block = (l + 1, l + 1 + n). Statistics: every
    position of every batch (pads too), float64; T = inv(XᵀX) XᵀY.
    """
    tok = copy.copy(tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = records[:dataset_size]
    batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
    encoded = [tok(batch, return_tensors="pt", padding="longest", max_length=max_length, truncation=True) for batch in batches]
    L = model.config.num_hidden_layers
    per_block = [[] for _ in range(L - layers_to_skip)]
    with torch.no_grad():
        for enc in encoded:
            hs = model(**enc, output_hidden_states=True).hidden_states
            mask = enc["attention_mask"]
            last = [torch.stack([h[b, m.nonzero()[-1], :] for b, m in enumerate(mask)]) for h in hs][1:]
            for i in range(L - layers_to_skip):
                a, b = last[i], last[i + layers_to_skip]
                cos = ((a / a.norm(dim=-1, keepdim=True)) * (b / b.norm(dim=-1, keepdim=True))).sum(-1).clamp(-1, 1)
                per_block[i].append((torch.acos(cos) / torch.pi).mean().item())
    means = [sum(v) / len(v) for v in per_block]
    best = min(range(len(means)), key=lambda i: means[i])
    s, e = best + 1, best + 1 + layers_to_skip
    xtx, xty = _direct_statistics(model, [(enc["input_ids"], enc["attention_mask"]) for enc in encoded], s, e, with_pads=True)
    return (s, e), torch.linalg.inv(xtx) @ xty


def _write_reference_yaml(path: Path, **values) -> Path:
    config = {  # the keys of the reference's examples/Replace_Me_pipeline_lstsq.yaml
        "method": "lstsq", "model_path": None, "dataset": None, "dataset_column": "text", "batch_size": 8,
        "max_length": 1024, "dataset_size": 128, "dataset_subset": "train", "use_4bit": False, "save_path": None,
        "min_distance_layer": 20, "save_transform_only": True, "diag": False, "alpha": 0, "distances_path": None,
        "num_A": 1, "layers_to_skip": 8, "merge_consecutive": True,
    }  # fmt: skip
    config.update(values)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _folded_T(source_dir, output_dir, s: int) -> torch.Tensor:
    """Recover T from the saved model: W_out' = Tᵀ W_out for layer s-1's MLP output projection."""
    from safetensors.torch import load_file

    key = f"model.layers.{s - 1}.mlp.down_proj.weight"
    before = load_file(Path(source_dir) / "model.safetensors")[key].double()
    after = load_file(Path(output_dir) / "model.safetensors")[key].double()
    return torch.linalg.lstsq(before.T, after.T).solution  # Wᵀ T = W'ᵀ


@pytest.mark.parametrize(
    ("layers", "batch_size", "extra"),
    [(1, 1, {}), (2, 1, {}), (2, 4, {"mask_padding": False})],
    ids=["-1-batch1", "-2-batch1", "-2-batch4-with-pads"],
)
@pytest.mark.slow
def test_reference_lstsq_yaml_reproduces_the_reference_T(shared, tmp_path, layers, batch_size, extra):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = shared / "models" / "stories260K"
    data = shared / "data" / "tinystories" / "valid.txt"
    size = 42  # with batch 4 the last 2 records are dropped, as the reference's DataLoader does
    config = _write_reference_yaml(
        tmp_path / "lstsq.yaml", model_path=str(model_dir), dataset=str(data), dataset_size=size,
        batch_size=batch_size, max_length=128, layers_to_skip=layers, save_path=str(tmp_path / "out"), **extra,
    )  # fmt: skip
    result = CliRunner().invoke(main, ["prune", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    meta = yaml.safe_load(result.output[result.output.index("{") :])
    assert meta["calibration"]["order"] == "file" and meta["calibration"]["holdout_fraction"] == 0

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    block, reference = _reference_T(model, tokenizer, load_texts(str(data)), layers_to_skip=layers,
                                    batch_size=batch_size, max_length=128, dataset_size=size)
    assert [tuple(c["block"]) for c in meta["compensations"]] == [block]
    assert block[1] < model.config.num_hidden_layers  # the last layer is where the references differ on purpose
    ours = _folded_T(model_dir, tmp_path / "out", block[0])
    assert _rel(ours, reference) < 1e-5
    # save_transform_only: T itself beside the model (transforms.safetensors)
    from replaceme.transforms import read_transforms

    blocks, maps = read_transforms(tmp_path / "out" / "transforms.safetensors")
    assert blocks == [block] and maps[0]["layer"] == block[0] - 1 and not maps[0]["diagonal"]
    assert _rel(maps[0]["transform"], reference) < 1e-5


def test_reference_config_keys_are_mapped_warned_or_rejected(tmp_path, caplog):
    from replaceme.config_file import REFERENCE_KEYS, read_config
    from replaceme.errors import ReplacemeError

    path = _write_reference_yaml(tmp_path / "a.yaml", model_path="m", dataset="wikitext", token="x",
                                 activations_save_path="a", thri=False, two_vectors=False, accurate=True,
                                 loss="cosine", solver="adam", tasks={"winogrande": {"fewshots": 5}})  # fmt: skip
    params, options = read_config(path)
    assert params["calib"] == "wikitext:wikitext-2-raw-v1" and params["calib_samples"] == 128
    assert params["order"] == "file" and params["drop_last"] and params["holdout_fraction"] == 0
    assert params["method"] == "replaceme-lstsq" and params["layers"] == 8
    assert options == {"num_blocks": 1, "merge_consecutive": True, "alpha": 0, "diag": False}
    assert params["output"] == "output_models/m_8_layers_wikitext_128_ReplaceMe_lstsq_1"  # save_path: null

    everything = _write_reference_yaml(tmp_path / "all.yaml", model_path="m", dataset="d.txt", dataset_size=None)
    assert read_config(everything)[0]["calib_samples"] >= 2**62  # null: every record, as there

    four_bit = _write_reference_yaml(tmp_path / "q.yaml", model_path="m", dataset="d.txt", use_4bit=True)
    params, _ = read_config(four_bit)
    assert params.get("calib_4bit", False) is torch.cuda.is_available()  # needs a GPU, else warned
    assert torch.cuda.is_available() or "4-bit needs a CUDA GPU" in caplog.text
    warned = caplog.text
    for key in ("token", "min_distance_layer", "activations_save_path", "tasks", "accurate", "loss", "solver"):
        assert f"'{key}'" in warned, key
    assert "'save_transform_only'" not in warned and params["save_transforms"] is True  # mapped to --save-transforms
    # every reference key is documented in the mapping table
    reference_keys = set(yaml.safe_load(path.read_text())) | {"thri", "two_vectors", "start_id", "end_id", "num_layer"}
    assert reference_keys <= set(REFERENCE_KEYS)

    cosine = _write_reference_yaml(tmp_path / "c.yaml", method="cosine", model_path="m", dataset="d.txt", num_A=2,
                                   layers_to_skip=4, accurate=True, solver="l-bfgs", max_length=64, alpha=0)  # fmt: skip
    params, options = read_config(cosine)
    assert params["method"] == "replaceme-cosine" and params["layers"] == 8
    assert options["accurate"] is True and options["solver"] == "lbfgs" and options["refit"] is True
    assert options["token_budget"] == 128 * 64 and "alpha" not in options

    for bad, match in (({"thri": True}, "thri"), ({"solver": "cg", "method": "cosine"}, "solver"),
                       ({"loss": "elasticnet", "method": "cosine"}, "loss"), ({"dataset": "fineweb_and_orca"}, "dataset"),
                       ({"diag": True, "method": "cosine"}, "diag"), ({"colour": 1}, "unknown key 'colour'")):  # fmt: skip
        path = _write_reference_yaml(tmp_path / "bad.yaml", model_path="m", **{"dataset": "d.txt", **bad})
        with pytest.raises(ReplacemeError, match=match):
            read_config(path)


def test_accurate_true_in_a_reference_config_reaches_the_cosine_fit(shared, tmp_path):
    """`accurate: true` changes the objective: T differs from the plain fit on the same data."""
    model_dir = shared / "models" / "stories260K"
    data = shared / "data" / "tinystories" / "valid.txt"
    outputs = {}
    for accurate in (False, True):
        out = tmp_path / f"out-{accurate}"
        config = _write_reference_yaml(
            tmp_path / f"c{accurate}.yaml", method="cosine", model_path=str(model_dir), dataset=str(data),
            dataset_size=16, batch_size=4, max_length=64, layers_to_skip=1, save_path=str(out), accurate=accurate,
            solver="adam", loss="cosine",
        )  # fmt: skip
        result = CliRunner().invoke(main, ["prune", "--config", str(config), "--json"])
        assert result.exit_code == 0, result.output
        meta = yaml.safe_load(result.output[result.output.index("{") :])
        assert meta["options"]["compensator:cosine"]["accurate"] is accurate
        outputs[accurate] = out
    s = meta["compensations"][0]["block"][0]
    from safetensors.torch import load_file

    key = f"model.layers.{s - 1}.mlp.down_proj.weight"
    assert not torch.equal(load_file(outputs[False] / "model.safetensors")[key], load_file(outputs[True] / "model.safetensors")[key])


def test_readme_maps_every_reference_key():
    from tiny import ROOT

    from replaceme.config_file import REFERENCE_KEYS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Coming from the ReplaceMe repository") :]
    section = section[: section.index("\n## ")]
    for key, meaning in REFERENCE_KEYS.items():
        assert f"| `{key}` | {meaning} |" in section, key
    assert "Pads are masked" in section and "before the final norm" in section
