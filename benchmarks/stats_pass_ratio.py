"""CPU-time ratio of the statistics pass to a bare forward pass, for one shape.

    python benchmarks/stats_pass_ratio.py HIDDEN LAYERS N      # e.g. 256 8 2

Random-weight Llama (``calibration_cost.small_shape``), float32, 64 sequences × 32
random tokens in batches of 8, one torch thread. Modes: ``bare`` (the decoder stack),
``dist`` (distance tables for block sizes 1..N), ``lstsq`` (what ``replaceme-lstsq``
asks for removing N layers, plus tables 1..N). They run in turn for 20 s and the
fastest *process CPU time* of each is kept: on a shared, overloaded machine wall time
varied by 10× between identical runs, while CPU time of a one-thread process does not
depend on the other processes. Prints one JSON line of ratios to ``bare``. To compare
two versions of the library, run it with ``PYTHONPATH`` pointing at each checkout.
"""
import sys, time, torch, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from calibration_cost import build_model, synthetic_calibration, small_shape
try:
    from replaceme.registry import adapter_for
except ImportError:
    from replaceme.adapters import adapter_for
from replaceme.methods import resolve_method
from replaceme.stats.collect import collect_stats
from replaceme.stats import StatsRequest
torch.set_num_threads(1)
h, L, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = build_model(small_shape(h, L, 32000), "cpu", "float32", 0); adapter = adapter_for(model)
calib = synthetic_calibration(64, 32, 8, 32000, 0)
req = resolve_method("replaceme-lstsq").stats_request(L, n).union(StatsRequest(block_sizes=set(range(1, n+1))))
dist = StatsRequest(block_sizes=set(range(1, n+1)))
def bare():
    with torch.no_grad():
        for ids in calib.input_ids: model.model(input_ids=ids)
fs = {"bare": bare, "dist": lambda: collect_stats(model, adapter, calib, dist, holdout_tokens=0),
      "lstsq": lambda: collect_stats(model, adapter, calib, req, holdout_tokens=0)}
best = {k: 1e9 for k in fs}
t_end = time.perf_counter() + 20
while time.perf_counter() < t_end:
    for k, f in fs.items():
        t = time.process_time(); f(); best[k] = min(best[k], time.process_time() - t)
print(json.dumps({"dist": best["dist"]/best["bare"], "lstsq": best["lstsq"]/best["bare"], "bare": best["bare"]}))
