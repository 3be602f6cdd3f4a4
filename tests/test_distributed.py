"""Data-parallel calibration: two gloo processes give what one process gives, rank 0
alone writes, and an error on one rank ends both with the same message."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny import calibration_text, make_tokenizer, tiny_model

from replaceme import distributed
from replaceme.cli import cli

SPILL = "--spill-dir=<spill>"  # made per run in the fixture
CACHED = "<cache>"  # this job uses the statistics cache (the fixture drops --no-cache)
CALIB = ["--calib-samples", "24", "--max-length", "40", "--batch-size", "4", "--no-cache"]
PRUNE_JOBS = {
    "lstsq": ["-m", "replaceme-lstsq", "-n", "2"],
    "uidl": ["-m", "uidl", "-n", "2"],
    "streamline": ["-m", "llm-streamline", "-n", "1", "-o", "token_budget", "400"],
    "cosine": ["-m", "replaceme-cosine", "-n", "1", "-o", "epochs", "2", "-o", "token_budget", "400"],
    # the default fit on every calibration token (L-BFGS from the sample's own least-squares map, which
    # torchrun's float64 reduction order cannot move) and the paper's Adam recipe: equal to one process
    "cosine-all-tokens": ["-m", "replaceme-cosine", "-n", "2", "-o", "token_budget", "100000"],
    "cosine-adam": ["-m", "replaceme-cosine", "-n", "1", "-o", "preset", "reference", "-o", "epochs", "3"],
    "lstsq-offload": ["-m", "replaceme-lstsq", "-n", "2", "--offload"],
    # selectors that score plans on the gathered held-out batches, and those without compensation
    "sleb": ["-m", "sleb", "-n", "2"],
    "lstsq-loss": ["-m", "replaceme-lstsq-loss", "-n", "1"],
    "laco": ["-m", "laco", "-n", "2", "-o", "merge_layers", "2"],
    "shortgpt": ["-m", "shortgpt", "-n", "2"],
    "block-removal": ["-m", "block-removal", "-n", "2"],  # no pass: rank 1 leaves at once
    # two shared passes: tables on every rank, then the chosen block's Gram sums
    "lstsq-two-passes": ["-m", "replaceme-lstsq", "-n", "2", "--stats-passes", "2"],
    # with the statistics cache: the first run fills it (rank 0 alone writes), the second reads both
    # passes from it on rank 0 and gives the other rank the first pass's tables
    "cached-two-passes-fill": ["-m", "replaceme-lstsq", "-n", "2", "--stats-passes", "2", CACHED],
    "cached-two-passes-hit": ["-m", "replaceme-lstsq", "-n", "2", "--stats-passes", "2", CACHED],
    # the sample received by rank 0 straight into its memory-mapped spill (and with --offload)
    "cosine-spill": ["-m", "replaceme-cosine", "-n", "1", "-o", "epochs", "2", "-o", "token_budget", "400", SPILL],
    "streamline-offload": ["-m", "llm-streamline", "-n", "1", "-o", "token_budget", "400", "--offload"],
}


def test_world_from_environment(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.world() == distributed.World(1, 0, 0) and not distributed.world().active
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    w = distributed.world()
    assert (w.size, w.rank, w.local_rank, w.active, w.is_root) == (3, 2, 0, True, False)
    assert w.shard(8) == [2, 5]
    assert sorted(sum((distributed.World(3, r).shard(8) for r in range(3)), [])) == list(range(8))
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(distributed.ReplacemeError, match="RANK=3"):
        distributed.world()


def test_every_statistic_kind_is_reduced():
    """A new field of ActivationStats must say how ranks combine it."""
    from replaceme.stats.store import ActivationStats

    assert {f.name for f in dataclasses.fields(ActivationStats)} == set(distributed.REDUCED_FIELDS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, jobs: list[tuple[str, list[str]]], ports: list[int], report: str) -> None:
    """One rank of a 2-process job: runs every CLI job in turn (one process group each)."""
    import logging

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    out = {}
    for (name, args), port in zip(jobs, ports):
        os.environ["MASTER_PORT"] = str(port)
        if name == "nan-on-rank-1":  # a model that overflows on rank 1 only (through the Python API)
            out[name] = _nan_job(rank, args)
            continue
        if name == "python-api":
            out[name] = _api_job(args)
            continue
        logging.getLogger("replaceme").handlers.clear()
        result = CliRunner().invoke(cli, args)
        out[name] = {"code": result.exit_code, "stdout": result.stdout, "output": result.output}
    Path(report, f"rank{rank}.json").write_text(json.dumps(out))


def _nan_job(rank: int, args: list[str]) -> dict:
    import replaceme
    from replaceme.calibration import CalibrationSpec

    model_dir, calib = args
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if rank == 1:
        with torch.no_grad():
            model.model.embed_tokens.weight.fill_(float("inf"))
    try:
        replaceme.prune(model, method="uidl", layers=1, tokenizer=make_tokenizer(), use_cache=False,
                        calibration=CalibrationSpec(calib, samples=16, max_length=32, batch_size=4))
    except Exception as exc:  # noqa: BLE001 - the test looks at what each rank raised
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


def _api_job(args: list[str]) -> dict:
    """``replaceme.prune`` on every rank: what each returns."""
    import replaceme
    from replaceme.calibration import CalibrationSpec

    model_dir, calib = args
    result = replaceme.prune(model_dir, method="replaceme-lstsq", layers=1, use_cache=False,
                             calibration=CalibrationSpec(calib, samples=16, max_length=32, batch_size=4))
    return {"type": type(result).__name__, "blocks": None if result is None else [[b.start, b.end] for b in result.plan.blocks]}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run every job once with 2 gloo processes (torch.multiprocessing) and once in this process."""
    import torch.multiprocessing as mp

    base = tmp_path_factory.mktemp("dist")
    model_dir = base / "tiny"
    tiny_model("llama", layers=6).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    calib = calibration_text(base / "calib.txt", records=40)
    evalf = calibration_text(base / "eval.txt", records=10, seed=3)

    def job_args(run: str) -> list[tuple[str, list[str]]]:
        spill = base / run / "spill"
        spill.mkdir(parents=True)
        jobs = [(name, ["prune", str(model_dir), *[f"--spill-dir={spill}" if a == SPILL else a for a in args if a != CACHED],
                        "--calib", str(calib), *[a for a in CALIB if CACHED not in args or a != "--no-cache"],
                        "--output", str(base / run / name)]) for name, args in PRUNE_JOBS.items()]
        jobs.append(("compare", ["compare", str(model_dir), "-m", "uidl", "-m", "replaceme-lstsq", "-n", "1,2",
                                 "--calib", str(calib), *CALIB, "--ppl", str(evalf), "--context-length", "32",
                                 "--output", str(base / run / "compare"), "--json"]))
        return jobs

    single = {}
    with pytest.MonkeyPatch.context() as env:  # a cache of each run's own (the ranks inherit it)
        env.setenv("REPLACEME_CACHE", str(base / "cache-one"))
        for name, args in job_args("one"):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
            single[name] = result.stdout
        report = base / "report"
        report.mkdir()
        jobs = job_args("two") + [("nan-on-rank-1", [str(model_dir), str(calib)]), ("python-api", [str(model_dir), str(calib)])]
        ports = [_free_port() for _ in jobs]
        env.setenv("REPLACEME_CACHE", str(base / "cache-two"))
        mp.spawn(_worker, args=(jobs, ports, str(report)), nprocs=2, join=True)
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]
    return base, single, ranks


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRUNE_JOBS))
def test_two_processes_prune_what_one_does(two_ranks, name):
    base, single, ranks = two_ranks
    assert ranks[0][name]["code"] == 0, ranks[0][name]["output"]
    assert ranks[1][name]["code"] == 0 and ranks[1][name]["stdout"] == "", "rank 1 must end quietly"
    assert "saved" not in ranks[1][name]["output"]
    one, two = _weights(base / "one" / name), _weights(base / "two" / name)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-7 * float(one[key].abs().max()))
    meta_one = json.loads((base / "one" / name / "pruning.json").read_text())
    meta_two = json.loads((base / "two" / name / "pruning.json").read_text())
    assert meta_two["plan"]["blocks"] == meta_one["plan"]["blocks"]
    passes = [m.get("statistics_memory", {}).get("passes") for m in (meta_one, meta_two)]
    assert passes[1] == passes[0] and (passes[0] == 2) == ("two-passes" in name)
    if name.startswith("cached"):  # rank 0 alone read (and before, wrote) the cache
        assert ("loaded from cache" in ranks[0][name]["output"]) == name.endswith("hit")
    for c1, c2 in zip(meta_one["compensations"], meta_two["compensations"]):
        assert c2["diagnostics"].get("tokens") == c1["diagnostics"].get("tokens")


@pytest.mark.slow
def test_two_processes_compare_what_one_does(two_ranks):
    base, single, ranks = two_ranks
    assert ranks[0]["compare"]["code"] == 0, ranks[0]["compare"]["output"]
    assert ranks[1]["compare"]["code"] == 0 and ranks[1]["compare"]["stdout"] == ""
    rows_one, rows_two = json.loads(single["compare"]), json.loads(ranks[0]["compare"]["stdout"])
    assert [(r["method"], r["layers"]) for r in rows_two] == [(r["method"], r["layers"]) for r in rows_one]
    for r1, r2 in zip(rows_one, rows_two):
        ppl = next(k for k in r1 if k.startswith("ppl"))
        assert r2[ppl] == pytest.approx(r1[ppl], rel=1e-6)
    saved = json.loads((base / "two" / "compare" / "results.json").read_text())
    assert saved  # rank 0 wrote the exports


@pytest.mark.slow
def test_an_error_on_one_rank_ends_both(two_ranks):
    _, _, ranks = two_ranks
    own, peer = ranks[1]["nan-on-rank-1"], ranks[0]["nan-on-rank-1"]
    assert own["error"] == "ReplacemeError" and "non-finite" in own["message"]
    assert peer["error"] == "PeerFailed" and peer["message"] == "rank 1: " + own["message"]


@pytest.mark.slow
def test_python_api_returns_none_on_other_ranks(two_ranks):
    """``replaceme.prune`` under torchrun: rank 0 gets the result, the others None (documented), no exception."""
    _, _, ranks = two_ranks
    assert ranks[0]["python-api"]["type"] == "PruneResult" and ranks[0]["python-api"]["blocks"]
    assert ranks[1]["python-api"] == {"type": "NoneType", "blocks": None}


@pytest.mark.slow
def test_torchrun_command_line_writes_what_one_process_does(tmp_path, tiny_dir):
    """The documented command: ``torchrun --nproc_per_node 2 --no-python replaceme prune ...``."""
    import shutil
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    exe = shutil.which("replaceme", path=str(bin_dir))
    if exe is None:
        pytest.skip("the replaceme script is not installed next to this interpreter")
    torchrun = shutil.which("torchrun", path=str(bin_dir))  # else the same launcher through this interpreter
    launcher = [torchrun] if torchrun is not None else [sys.executable, "-m", "torch.distributed.run"]
    calib = calibration_text(tmp_path / "calib.txt", records=40)
    args = ["prune", str(tiny_dir), "-m", "replaceme-lstsq", "-n", "2", "--calib", str(calib), *CALIB]
    one = CliRunner().invoke(cli, [*args, "--output", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*launcher, "--nproc_per_node", "2", "--master_port", str(_free_port()), "--no-python", exe,
                          *args, "--output", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("saved to") == 1  # rank 0 alone reports and writes
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7 * float(a[key].abs().max()))
