"""What a run changes in the process, it gives back: loading a model turns
transformers' progress bars off only while it loads, and ``--offload``'s glibc
setting (large allocations in their own memory maps) lasts only as long as the
offloaded model. Plus the one helper that shortens an error to its first line."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
from tiny import ROOT

from replaceme.errors import ReplacemeError, first_line


def test_first_line_of_an_error():
    assert first_line(ValueError("first\nsecond")) == "first"
    assert first_line(ValueError("\n  padded  \nnext")) == "padded"
    assert first_line(KeyError()) == "KeyError"  # an empty message: the class name
    assert first_line(ReplacemeError("a\nb")) == "a\\nb"  # our errors are one line already
    assert first_line("  text\nmore") == "text" and first_line("") == ""


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_transformers_progress_bars_as_they_were(enabled, tiny_dir):
    from transformers.utils import logging as hf_logging

    from replaceme.loading import load_model

    before = hf_logging.is_progress_bar_enabled()
    try:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
        model, _ = load_model(str(tiny_dir), device="cpu")
        assert model.config.num_hidden_layers == 6
        assert hf_logging.is_progress_bar_enabled() is enabled
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()


#: runs in a fresh process, so no other test's offloaded model can still hold the setting
_OFFLOAD_SCRIPT = textwrap.dedent("""
    import ctypes, gc, sys

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def own_maps(size, count=32):
        # how many of `count` live allocations of `size` bytes glibc serves with their own
        # memory maps (any one can come from a free heap chunk, hence several, held at once)
        before = libc.mallinfo2().hblkhd
        blocks = [libc.malloc(size) for _ in range(count)]
        mapped = (libc.mallinfo2().hblkhd - before) // size
        for p in blocks:
            libc.free(p)
        return mapped

    from replaceme.offload import load_offloaded
    from replaceme.registry import adapter_for

    offloaded, _ = load_offloaded(sys.argv[1], device="cpu", dtype="auto", trust_remote_code=False,
                                  adapter_for=adapter_for)
    held = own_maps(900 * 1024), own_maps(2 * 1024 * 1024)
    del offloaded
    gc.collect()
    print(*held, own_maps(900 * 1024))
""")


@pytest.mark.slow  # a fresh process (torch imported again)
@pytest.mark.skipif(platform.system() != "Linux", reason="a glibc setting")
def test_offload_gives_back_the_glibc_allocation_setting(tiny_dir):
    out = subprocess.run([sys.executable, "-c", _OFFLOAD_SCRIPT, str(tiny_dir)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # while the offloaded model lives: 1 MiB and more get their own maps, 900 KiB comes from the heap;
    # once it is gone: glibc's start threshold (128 KiB) again, so 900 KiB gets its own maps
    # (all but those the heap's free chunks can serve)
    held_900k, held_2m, after_900k = map(int, out.stdout.split())
    assert held_900k == 0 and held_2m == 32
    assert after_900k >= 16, after_900k
