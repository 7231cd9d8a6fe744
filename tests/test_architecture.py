"""The shape of the code: the import graph follows the pipeline, functions stay short, one module names run files."""

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdsearch"
RUN_FILES = ("config.yaml", "data.json", "teacher.json", "sample_batch.safetensors", "study.db", "finalists.json",
             "candidates.csv", "report.html", "result.json", "checkpoint.pt", "metrics.csv", "model.safetensors",
             "student.yaml", "student.onnx", "student.torchscript.pt")


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_no_import_circle():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("kdsearch")
    modules = sorted(graph.modules)
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in graph.modules} for m in modules}
    # Tarjan's strongly connected components: any component of more than one module is an import circle.
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(m):
        index[m] = low[m] = counter[0]
        counter[0] += 1
        stack.append(m)
        on_stack.add(m)
        for d in edges[m]:
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in on_stack:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    assert circles == []


def test_stages_import_only_earlier_stages():
    """The import-linter layers contract in pyproject.toml (also run by `make test` as lint-imports)."""
    pytest.importorskip("importlinter")
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    done = subprocess.run([str(bin_dir / "lint-imports")], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:]


def test_no_function_over_60_lines():
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in _sources() for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []


def _string_literals(tree: ast.AST):
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node) is not None:
            docstrings.add(id(node.body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


def test_only_the_run_folder_module_names_run_files():
    # teacher.py looks up a Hugging Face repo's weight files, which happen to share a name with ours
    allowed = {PACKAGE / "run" / "folder.py", PACKAGE / "teacher" / "teacher.py"}
    named = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}"
        for path, tree in _sources() if path not in allowed
        for node in _string_literals(tree) if any(name in node.value for name in RUN_FILES)
    ]
    assert named == []


def test_registry_warns_on_overwrite_and_names_close_matches():
    from kdsearch.exceptions import ProxyError
    from kdsearch.registry import Registry

    reg = Registry("proxy", ProxyError)
    reg.add("synflow", len)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.add("synflow", min)
    assert any("registered twice" in str(w.message) for w in caught)
    assert reg.get("synflow") is min
    with pytest.raises(ProxyError, match=r"Unknown proxy 'synflaw'; Did you mean 'synflow'\? available: synflow\."):
        reg.get("synflaw")


@pytest.mark.parametrize(
    "module, name",
    [("kdsearch.spaces.families", "FAMILIES"), ("kdsearch.proxies", "PROXIES"), ("kdsearch.distill", "LOSSES"),
     ("kdsearch.search", "SAMPLERS"), ("kdsearch.data", "LOADERS"), ("kdsearch.export", "FORMATS")],
)
def test_every_plugin_kind_uses_the_one_registry(module, name):
    import importlib

    from kdsearch.registry import Registry

    registry = getattr(importlib.import_module(module), name)
    assert isinstance(registry, Registry) and len(registry) >= 2
