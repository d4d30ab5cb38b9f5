"""The house: the import graph of orm_cache has no cycle and points down only, and no module
grows past ~400 lines without saying why. Every import counts, at module level or inside a
function (a lazy import is still a dependency); ``if TYPE_CHECKING:`` blocks do not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "orm_cache"

# Lowest first. A module may import its own package and any package of a lower layer, never one
# of a higher layer; within a layer, packages may import each other as long as no cycle forms.
LAYERS = [
    {"errors"},
    {"progress", "outputs", "models", "fields", "testing"},
    {"text"},
    {"store"},
    {"data", "encode", "head", "evaluate"},
    {"pipeline", "config"},  # config re-exports every package's spec for users
    {"cli", "__main__", "(root)"},
]
LAYER = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_lines(tree) -> set[int]:
    lines = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for m in ast.walk(n):
                if hasattr(m, "lineno"):
                    lines.add(m.lineno)
    return lines


def import_graph() -> dict[str, set[str]]:
    """module -> the orm_cache modules it imports (a name imported from a package that is a
    submodule counts as that submodule)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        deps = set()
        for n in ast.walk(tree):
            if n.lineno in skip if hasattr(n, "lineno") else False:
                continue
            if isinstance(n, ast.ImportFrom):
                if n.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (n.level - 1)]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                for a in n.names:
                    full = f"{mod}.{a.name}"
                    deps.add(full if full in mods else mod)
            elif isinstance(n, ast.Import):
                deps.update(a.name for a in n.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    graph = {}
    for m, deps in import_graph().items():
        graph.setdefault(package(m), set()).update(package(d) for d in deps if package(d) != package(m))
    assert cycles(graph) == []


def test_imports_point_down_only():
    upward = sorted(f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
                    if LAYER[package(d)] > LAYER[package(m)])
    assert upward == []


def test_every_package_has_a_layer():
    assert {package(m) for m in modules()} <= set(LAYER)


def test_modules_stay_small_or_say_why():
    """A module over MAX_LINES lines states the reason in its docstring ("Over 400 lines: …")."""
    long = []
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if n > MAX_LINES and "Over 400 lines:" not in doc:
            long.append(f"{name} ({n} lines)")
    assert long == []


def test_the_graph_sees_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("command", ["embed", "fit-head", "sweep", "eval", "verify", "score", "rank", "export",
                                     "import-head", "demo", "make-data", "cache", "help"])
def test_each_command_help_fits_one_screen(command):
    from conftest import run

    r = run(command, "--help")
    assert r.exit_code == 0, r.output
    assert len(r.output.splitlines()) <= 60, f"{command} --help is {len(r.output.splitlines())} lines"


def test_top_level_help_lists_each_command_once():
    from conftest import run

    out = run("--help").output
    assert "Commands:" not in out  # the staged table in the group's help is the one list
    for command in ("embed", "fit-head", "sweep", "eval", "verify", "score", "rank", "export", "import-head", "demo",
                    "make-data", "cache", "help"):
        assert command in out, command
