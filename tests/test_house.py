"""The shape of the package (issue 15): no import circle anywhere in mlsafe, imports inside
functions included, and backends named only by their registry (mlsafe/backends.py).

Both checks read the source with `ast`; nothing is imported but mlsafe.backends (for the
registered names)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mlsafe"


def module_files(root: Path = PKG) -> dict[str, Path]:
    """{dotted module name: file} of every .py under `root` (a package is its __init__)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """{module: {imported mlsafe module: first line}}, every import statement anywhere in the
    file (module level, inside functions, under `if TYPE_CHECKING`). `from a.b import c` is an
    edge to a.b and, when a.b.c is a module, to a.b.c; `import a.b.c` an edge to a.b.c."""
    graph: dict[str, dict[str, int]] = {name: {} for name in mods}
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t in mods and t != name:
                    graph[name].setdefault(t, node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def describe(comp: list[str], graph: dict[str, dict[str, int]]) -> str:
    """The edges inside one component, as 'a -> b (line n)'."""
    inside = set(comp)
    return "; ".join(f"{a} -> {b} (line {line})" for a in comp for b, line in graph[a].items() if b in inside)


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}, "e": {"e": 5}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_import_graph_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "mlsafe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from mlsafe import sub\n")
    graph = import_graph(module_files(pkg))
    assert graph["mlsafe.sub"] == {"mlsafe.sub.leaf": 1}
    assert graph["mlsafe.sub.leaf"] == {"mlsafe": 2, "mlsafe.sub": 2}
    assert cycles(graph) == [["mlsafe.sub", "mlsafe.sub.leaf"]]


def test_no_import_circle_in_mlsafe():
    graph = import_graph(module_files())
    assert len(graph) > 50, "the package was not found"
    found = cycles(graph)
    assert not found, "import circles: " + " | ".join(describe(c, graph) for c in found)


# ----------------------------------------------------------------------------- backend names
#: Strings equal to a backend name that are not a choice of backend: names of cache folders
#: and of the packaged files' keys (each is data of the thing the registry entry loads).
NAME_AS_DATA = {
    ("mlsafe/organism/train.py", "organism"): "the organism's cache subfolder",
    ("mlsafe/gemma/checkpoint.py", "gemma-270m"): "MODEL_KEY, the GGUF checkpoint's cache folder",
    ("mlsafe/packaged.py", "qwen2.5-coder-0.5b"): "PackagedGGUF.key (cache folder); its CLI default",
    ("mlsafe/packaged.py", "qwen2.5-coder-1.5b"): "PackagedGGUF.key (cache folder)",
    ("mlsafe/evaluate/judge_dev_real.py", "qwen2.5-coder-0.5b"): "the judged responses' cache folder",
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def backend_name_uses(names: set[str], root: Path = PKG) -> dict[tuple[str, str], bool]:
    """{(file, name): compared} for every string constant equal to one of `names` outside
    mlsafe/backends.py and docstrings; compared is True when one occurrence is an operand of
    a comparison (`==`, `in` a literal tuple/list/set, ...)."""
    out: dict[tuple[str, str], bool] = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent).as_posix()
        if rel == "mlsafe/backends.py":
            continue
        tree = ast.parse(f.read_text(encoding="utf-8"))
        docs = _docstring_nodes(tree)
        compared: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    elts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                    compared.update(id(e) for e in elts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docs:
                key = (rel, node.value)
                out[key] = out.get(key, False) or id(node) in compared
    return out


def test_backend_name_finder_sees_comparisons_not_docstrings(tmp_path):
    pkg = tmp_path / "mlsafe"
    pkg.mkdir()
    (pkg / "a.py").write_text('"""organism"""\ndef f(k):\n    """organism"""\n    return k in ("organism", "x")\n')
    (pkg / "b.py").write_text('CACHE = "organism"\n')
    (pkg / "backends.py").write_text('if k == "organism": pass\n')
    assert backend_name_uses({"organism"}, pkg) == {("mlsafe/a.py", "organism"): True,
                                                    ("mlsafe/b.py", "organism"): False}


def test_only_the_registry_names_a_backend():
    from mlsafe.backends import BACKENDS

    uses = backend_name_uses(set(BACKENDS))
    stray = {k: v for k, v in uses.items() if k not in NAME_AS_DATA}
    assert not stray, f"backend names outside mlsafe/backends.py (True: compared against): {stray}"
    compared = [k for k, v in uses.items() if v]
    assert not compared, f"comparisons against a backend name outside the registry: {compared}"
    stale = sorted(set(NAME_AS_DATA) - set(uses))
    assert not stale, f"entries of NAME_AS_DATA that no longer occur (remove them): {stale}"


# ----------------------------------------------------------------------------- test layers
def _top_conftest():
    """tests/conftest.py as a module (by path: tests/reliability has a conftest of its own)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlsafe_tests_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_test_file_has_a_layer():
    c = _top_conftest()
    LAYERS, MARKERS, layer_of = c.LAYERS, c.MARKERS, c.layer_of
    tests = Path(__file__).resolve().parent
    files = sorted(f.relative_to(tests).as_posix() for f in tests.rglob("test_*.py"))
    missing = [f for f in files if layer_of(f) is None]
    assert not missing, f"add these test files to LAYERS in tests/conftest.py: {missing}"
    assert set(LAYERS.values()) <= set(MARKERS)
    stale = [k for k in LAYERS if not k.endswith("/") and k not in files]
    assert not stale, f"LAYERS names test files that do not exist: {stale}"
    assert layer_of("reliability/test_kill.py") == "integration" and layer_of("test_nope.py") is None


def test_this_file_carries_its_layer_marker(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("integration") is None
