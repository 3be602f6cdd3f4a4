"""While a loaded model lives, buffers of 1 MiB or more get their own memory maps, which
go back to the system when freed: a long run's memory does not creep up with heap
fragments between its stages (glibc raises its threshold to 32 MiB by itself otherwise)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
from tiny import make_tokenizer, tiny_model

pytestmark = [pytest.mark.slow,  # two fresh interpreters importing transformers
              pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")]

#: prints how many memory maps a 2 MiB tensor adds (glibc's ``mallinfo2().hblks``): 1 when
#: it gets its own map, 0 when it comes from the heap
SCENARIO = """
import ctypes, gc, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] != "-":
    from replaceme.loading import load_model
    model, _ = load_model(sys.argv[1], device="cpu")
scratch = torch.ones(30 << 20, dtype=torch.uint8)  # freeing it raises glibc's dynamic threshold to 30 MiB
del scratch
before = libc.mallinfo2().hblks
buffer = torch.ones(2 << 20, dtype=torch.uint8)
print(libc.mallinfo2().hblks - before)
if sys.argv[1] != "-":
    del model
    gc.collect()  # the last model gone: glibc's start threshold (128 KiB) again
    before = libc.mallinfo2().hblks
    other = torch.ones(2 << 20, dtype=torch.uint8)
    print(libc.mallinfo2().hblks - before)
"""


def _maps_added(model_dir: str) -> list[int]:
    try:
        out = subprocess.run([sys.executable, "-c", SCENARIO, model_dir], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as exc:
        if "mallinfo2" in exc.stderr:
            pytest.skip("glibc older than 2.33 (no mallinfo2)")
        raise
    return [int(v) for v in out.stdout.split()]


def test_a_loaded_model_gives_large_buffers_their_own_maps(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    assert _maps_added("-") == [0], "without a model glibc serves 2 MiB from its heap (the control)"
    assert _maps_added(str(tmp_path)) == [1, 1]
