"""The documentation runs: every Python block of the README (in order, one namespace, as a reader would paste
them) and every docstring example (``>>>``) in the package. Docs that drift from the code fail here."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import lowbit

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_readme_has_python_blocks():
    assert len(python_blocks(ROOT / "README.md")) >= 4


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """Each block runs after the ones above it; files it writes go to a temporary folder."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks(ROOT / "README.md")):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # the block number and the first line say which example broke
            raise AssertionError(f"README python block {i + 1} ({block.splitlines()[0]!r}) failed: {exc!r}") from exc


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(lowbit.__path__, "lowbit."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py") and ">>> " in Path(spec.origin).read_text():
            names.append(info.name)
    return names


def test_some_docstrings_have_examples():
    assert "lowbit.zoo" in _modules_with_examples()


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
