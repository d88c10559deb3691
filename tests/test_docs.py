"""The documentation: every Python code block runs, and the API reference is complete."""

from __future__ import annotations

import inspect
import pathlib
import re

import pytest

import funcgrad as fg

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(path):
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("path", [p for p in DOC_FILES if _blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    """Blocks of one page run in order in one namespace, in a scratch directory."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for i, code in enumerate(_blocks(path)):
        try:
            exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{path.relative_to(ROOT)} block {i} failed: {exc!r}\n"
                                 f"{code}") from exc


def test_block_extraction_finds_code():
    blocks = _blocks(ROOT / "docs" / "concepts" / "backprop.md")
    assert blocks and "squared_error" in blocks[0]


def _documented_modules(api_text):
    return set(re.findall(r"^::: ([\w.]+)\s*$", api_text, re.M))


def test_every_public_name_has_a_docstring_and_an_api_entry():
    api = _documented_modules((ROOT / "docs" / "api.md").read_text())
    missing = []
    for name in fg.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(fg, name)
        if inspect.ismodule(obj):
            if obj.__name__ not in api:
                missing.append(f"{name}: module {obj.__name__} not in docs/api.md")
            if not (obj.__doc__ or "").strip():
                missing.append(f"{name}: module has no docstring")
            continue
        if name == "PRIMITIVES":
            home = "funcgrad.registry"
        else:
            if not (inspect.getdoc(obj) or "").strip():
                missing.append(f"{name}: no docstring")
            home = obj.__module__
        if f"funcgrad.{name}" not in api and home not in api:
            missing.append(f"{name}: neither funcgrad.{name} nor {home} in docs/api.md")
    assert not missing, missing


def test_api_coverage_check_can_fail():
    assert "funcgrad.nonexistent" not in _documented_modules("::: funcgrad.train\n")
