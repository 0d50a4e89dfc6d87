"""The hand-written stub python/mailbak/_engine.pyi is the boundary's contract: it names exactly
what the built extension exports, with the same keyword parameters."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from mailbak import _engine

STUB = Path(_engine.__file__).with_name("_engine.pyi")


def stub_items() -> dict[str, ast.AST]:
    tree = ast.parse(STUB.read_text())
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_stub_and_module_export_the_same_names():
    items = stub_items()
    helper_types = {"Tally", "TransferResult", "DeleteResult", "Area", "CheckSummary", "IndexSnapshot", "BuildInfo", "MessageColumns", "ShardFacts", "DamageRecord", "ContentCounts"}  # TypedDicts of the stub only
    exported = {n for n in dir(_engine) if not n.startswith("_")}
    assert exported == set(items) - helper_types


def test_function_parameters_match():
    for name, node in stub_items().items():
        if not isinstance(node, ast.FunctionDef):
            continue
        sig = inspect.signature(getattr(_engine, name))
        stub_params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
        assert list(sig.parameters) == stub_params, name
        kwonly = {a.arg for a in node.args.kwonlyargs}
        assert kwonly == {p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}, name


def test_progress_methods_match():
    node = stub_items()["Progress"]
    stub = {n.name for n in node.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")}
    real = {n for n in dir(_engine.Progress) if not n.startswith("_")}
    assert stub == real
