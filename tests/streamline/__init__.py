"""Tests of the LLM-Streamline plugin (a package, so its conftest does not shadow tests/conftest.py)."""
