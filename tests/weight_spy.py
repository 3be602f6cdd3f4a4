"""A spy on every way a model's weights are read (third-party and builtin functions only):

- ``transformers.PreTrainedModel.from_pretrained``: every in-memory load (whole, 4-bit);
- ``builtins.open`` of a ``*.safetensors`` file: any byte read past the file's header
  (``--offload`` reads tensors with positioned reads; reading headers is not loading).

With ``abort=True`` the first weight read raises :class:`WeightsRead`, a ``BaseException``
that no ``except Exception`` of the code under test turns into an error message, so a run
that gets past every refusal ends there at once.
"""

from __future__ import annotations

import builtins
import struct
from pathlib import Path

import transformers


class WeightsRead(BaseException):
    """Raised by the spy at the first weight read when it aborts."""


class _Spied:
    """A file object that reports reads past the safetensors header to the spy."""

    def __init__(self, fh, spy: WeightSpy, path: str, header_end: int):
        self._fh, self._spy, self._path, self._end = fh, spy, path, header_end

    def _check(self) -> None:
        if self._fh.tell() >= self._end:
            self._spy.hit(f"read tensor data of {Path(self._path).name}")

    def read(self, *args):
        self._check()
        return self._fh.read(*args)

    def readinto(self, buffer):
        self._check()
        return self._fh.readinto(buffer)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()
        return False

    def __getattr__(self, name):
        return getattr(self._fh, name)


class WeightSpy:
    """Install with :meth:`install` (a pytest ``monkeypatch``); ``reads`` lists what was read."""

    def __init__(self, abort: bool = False):
        self.abort = abort
        self.reads: list[str] = []

    def hit(self, what: str) -> None:
        self.reads.append(what)
        if self.abort:
            raise WeightsRead(what)

    def install(self, monkeypatch) -> WeightSpy:
        spy, real_open = self, builtins.open
        real_from_pretrained = transformers.PreTrainedModel.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):
            spy.hit(f"{cls.__name__}.from_pretrained")
            return real_from_pretrained(cls, *args, **kwargs)

        def spied_open(file, mode="r", *args, **kwargs):
            fh = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, Path)) and str(file).endswith(".safetensors") and "r" in mode and "b" in mode:
                with real_open(file, "rb") as head:
                    raw = head.read(8)
                end = 8 + struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
                return _Spied(fh, spy, str(file), end)
            return fh

        monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(from_pretrained))
        monkeypatch.setattr(builtins, "open", spied_open)
        return self
