"""Nothing loads pickles: a scan of the package's source for pickle imports, ``torch.load`` without
``weights_only=True`` and ``np.load`` without ``allow_pickle=False``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segvolpipe"
SOURCES = sorted(PACKAGE.rglob("*.py"))
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def _calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    """Calls ``module.name(...)`` (e.g. ``torch.load``) in ``tree``."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == name and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "absent"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(PACKAGE)) for p in SOURCES])
def test_no_pickle_is_loaded(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & PICKLERS, f"{path}:{node.lineno} imports a pickler"
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in PICKLERS, f"{path}:{node.lineno} imports a pickler"
    for call in _calls(tree, "torch", "load"):
        assert _keyword(call, "weights_only") is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
    for call in _calls(tree, "np", "load"):
        assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}: np.load without allow_pickle=False"
    for call in _calls(tree, "np", "save"):
        assert _keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}: np.save without allow_pickle=False"


def test_the_scan_sees_the_loaders() -> None:
    """The scan is not vacuous: the package's checkpoint and array loaders are among the calls it checks."""
    found = {(p.name, c.func.attr) for p in SOURCES for m, n in (("torch", "load"), ("np", "load"))
             for c in _calls(ast.parse(p.read_text()), m, n)}
    assert ("checkpoint.py", "load") in found and ("atomic.py", "load") in found
