"""The README's opening commands are the ones CI and users run."""

from __future__ import annotations

import re

from tiny import ROOT


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    head = text[: text.index("\n## ")]
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def test_readme_opens_with_the_main_job_and_the_test_command():
    main, tests = _readme_commands()[:2]
    assert main.strip().endswith("replaceme compare")
    assert "torch==2.13.0" in main and "torch==2.13.0" in tests  # CPU torch first, before anything can pull CUDA
    assert tests.strip().endswith("pytest -q")


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tests = _readme_commands()[1].strip()
    assert tests in ci.splitlines()
