"""The import graph of ``kdlab``: no cycle among module-level imports, and the methods never import the trainer.

The graph is read from the source with :mod:`ast` (nothing is imported): every ``import``/``from ... import``
statement of every module under ``kdlab/``, split into module-level imports (run when the module is imported,
including class bodies and ``try``/``if`` blocks at module level, but not ``if TYPE_CHECKING:`` blocks) and
function-level imports (run when the function is called). An edge ``a -> b`` means that importing ``a`` imports ``b``;
importing ``kdlab.x.y`` also runs the ``__init__`` of ``kdlab.x``, so the edge goes to every package on the way
that is not already an ancestor of ``a`` (whose ``__init__`` has started before ``a`` itself).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "kdlab"


@dataclass
class ImportGraph:
    """``module -> imported kdlab modules``, module-level and function-level edges kept apart."""

    modules: set[str] = field(default_factory=set)
    module_level: dict[str, set[str]] = field(default_factory=dict)
    function_level: dict[str, set[str]] = field(default_factory=dict)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, module: str, is_package: bool):
    """Yield ``(target, function_level)`` for every import statement of a module (targets as written, resolved)."""

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, in_function: bool):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, in_function
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            for alias in node.names:
                # `from pkg import name`: `pkg.name` if it is a module, else `pkg` (checked by the caller)
                yield (f"{base}.{alias.name}", base), in_function
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from visit(child, in_function)
        else:
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                yield from visit(child, inner)

    yield from visit(tree, False)


def build_graph() -> ImportGraph:
    """Parse every module of ``kdlab`` and collect its imports of other ``kdlab`` modules."""
    graph = ImportGraph()
    sources = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = _module_name(path)
        graph.modules.add(name)
        sources[name] = (path, path.name == "__init__.py")
    for name, (path, is_package) in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own_ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if is_package:
            own_ancestors.add(name)
        for target, in_function in _imports(tree, name, is_package):
            if isinstance(target, tuple):
                target = target[0] if target[0] in graph.modules else target[1]
            if target != "kdlab" and not target.startswith("kdlab."):
                continue
            if target not in graph.modules:
                raise AssertionError(f"{name} imports {target}, which is not a module of kdlab")
            parts = target.split(".")
            chain = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}  # kdlab.x, kdlab.x.y, ... (not kdlab)
            edges = graph.function_level if in_function else graph.module_level
            edges.setdefault(name, set()).update(t for t in chain - own_ancestors if t != name)
    return graph


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    nodes = set(edges) | {w for ws in edges.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            strongconnect(v)
    return cycles


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph()


def test_graph_sees_known_imports(graph):
    # The walker finds what is there (so that an empty graph cannot pass the tests below).
    assert len(graph.modules) > 100
    assert "kdlab.config" in graph.module_level["kdlab.methods.base"]
    assert "kdlab.distributed" in graph.module_level["kdlab.methods.crd"]
    assert "kdlab.distributed" in graph.module_level["kdlab.train.distributed"]
    assert "kdlab.methods.kd" in graph.module_level["kdlab.methods.fusion.base"]
    assert "kdlab.train.trainer" in graph.function_level["kdlab.cli.main"]


def test_find_cycles_on_a_known_graph():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_level_import_cycle(graph):
    cycles = find_cycles(graph.module_level)
    assert not cycles, "module-level import cycles in kdlab: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_config_does_not_import_the_methods(graph):
    # The run config resolves `method.name` through kdlab.registry.METHODS only (the registry imports the package).
    assert not {t for t in graph.module_level.get("kdlab.config", ()) if t.startswith("kdlab.methods")}
    assert not {t for t in graph.function_level.get("kdlab.config", ()) if t.startswith("kdlab.methods")}


def test_methods_do_not_import_the_trainer(graph):
    bad = sorted(
        f"{m} -> {t}"
        for edges in (graph.module_level, graph.function_level)
        for m, targets in edges.items()
        if m == "kdlab.methods" or m.startswith("kdlab.methods.")
        for t in targets
        if t == "kdlab.train" or t.startswith("kdlab.train.")
    )
    assert not bad, "kdlab/methods imports kdlab/train (use kdlab.distributed for collectives): " + ", ".join(bad)


def test_lower_layers_do_not_import_the_trainer(graph):
    # The functional losses, the collectives, the registry and the config sit below the trainer and the methods.
    for low in ("kdlab.losses", "kdlab.distributed", "kdlab.registry", "kdlab.config", "kdlab.types"):
        for edges in (graph.module_level, graph.function_level):
            for m, targets in edges.items():
                if m == low or m.startswith(low + "."):
                    up = sorted(t for t in targets if t.startswith(("kdlab.train", "kdlab.methods", "kdlab.cli")))
                    assert not up, f"{m} imports {up}"


# ----------------------------------------------------------------------------------------------------------------
# Start-up: `kdlab --help` and `kdlab list` answer without importing torch (a fresh interpreter per command).

_RUN = """
import json, sys
from kdlab.cli.main import main
from kdlab.listing import source_fingerprint
before = source_fingerprint()
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "same_sources": before == source_fingerprint()}),
      file=sys.stderr)
"""


def _fresh(args: list[str], cache: Path) -> tuple[dict, str]:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "KDLAB_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    return json.loads(proc.stderr.strip().splitlines()[-1]), proc.stdout


def test_help_does_not_import_torch(tmp_path):
    result, out = _fresh(["--help"], tmp_path)
    assert result["code"] == 0 and "train" in out
    assert not result["torch"]


@pytest.mark.parametrize("what", ["methods", "models", "datasets"])
def test_list_answers_without_torch_once_the_cache_is_written(tmp_path, what):
    from kdlab.listing import live_rows

    first, out_cold = _fresh(["list", what], tmp_path)  # cold: imports the registries, writes the cache
    assert first["code"] == 0 and first["torch"]
    for _ in range(3):  # other processes may touch kdlab's sources meanwhile; then the cache is rightly stale
        second, out_warm = _fresh(["list", what], tmp_path)
        if second["same_sources"] and first["same_sources"]:
            break
        first = second
    assert second["code"] == 0
    assert not second["torch"], f"kdlab list {what} imported torch although kdlab's sources were unchanged"
    assert out_warm == out_cold
    names = [row[0] for row in live_rows(what)]
    assert names and all(name in out_warm for name in names)


def test_list_cache_is_rewritten_when_the_sources_change(tmp_path, monkeypatch):
    import json

    from kdlab import listing

    monkeypatch.setenv("KDLAB_CACHE_DIR", str(tmp_path))
    path = tmp_path / "registry-methods.json"
    path.write_text(json.dumps({"fingerprint": "an older tree", "rows": [["stale", "not a method"]]}))
    rows = listing.registry_rows("methods")
    assert rows == listing.live_rows("methods") and ["stale", "not a method"] not in rows
    assert json.loads(path.read_text())["fingerprint"] == listing.source_fingerprint()
    path.write_text("{not json")  # a corrupt cache is ignored and replaced
    assert listing.registry_rows("methods") == rows


def test_train_logs_its_first_line_before_importing_torch():
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[1] / "configs" / "debug" / "digits_kd.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "kdlab",
            "--no-tcmalloc",
            "train",
            str(config),
            "method.temperature=-1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]  # the bad temperature is refused after the registries load
    lines = proc.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if "loading torch and the registries" in line)
    torch_done = next(
        i for i, line in enumerate(lines) if line.startswith("import time:") and line.split("|")[-1].strip() == "torch"
    )
    assert first < torch_done


# ----------------------------------------------------------------------------------------------------------------
# Method configs: torch-free modules (kdlab/method_configs), so `kdlab show` and every config check read a config
# without importing torch or the methods.


def test_every_method_config_lives_in_the_torch_free_registry():
    from kdlab.registry import METHOD_CONFIGS, METHODS

    wrong = [n for n in METHODS if n not in METHOD_CONFIGS or METHOD_CONFIGS.get(n) is not METHODS.get(n).Config]
    assert not wrong, (
        f"methods {wrong}: move the nested Config dataclass to kdlab/method_configs/<module>.py (decorated with "
        "@register_config(name)) and set `Config = <Name>Config` in the method class"
    )
    assert set(METHOD_CONFIGS.names()) == set(METHODS.names())


def test_method_configs_import_only_the_config_layer(graph):
    allowed = ("kdlab.config", "kdlab.ranges", "kdlab.registry", "kdlab.method_configs")
    for edges in (graph.module_level, graph.function_level):
        for m, targets in edges.items():
            if m == "kdlab.method_configs" or m.startswith("kdlab.method_configs."):
                bad = sorted(t for t in targets if not t.startswith(allowed) and t != "kdlab")
                assert not bad, f"{m} imports {bad}: method configs stay torch-free"


_LOAD = """
import json, sys
from kdlab.config import dump_config, load_config
for path in sys.argv[1:]:
    dump_config(load_config(path))
print(json.dumps({"torch": "torch" in sys.modules, "methods": "kdlab.methods" in sys.modules}), file=sys.stderr)
"""


def test_show_answers_without_torch(tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "debug" / "digits_kd.yaml"
    result, out = _fresh(["show", str(config), "method.temperature=2"], tmp_path)
    assert result["code"] == 0 and "temperature: 2" in out and "kd_weight:" in out
    assert not result["torch"], "kdlab show imported torch"


def test_one_shipped_config_of_every_method_loads_without_torch():
    import json
    import subprocess
    import sys

    import yaml

    from kdlab.registry import METHOD_CONFIGS

    root = Path(__file__).resolve().parents[1] / "configs"
    first: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        if "sweeps" in path.parts:
            continue
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        name = (raw.get("method") or {}).get("name", "ce") if isinstance(raw, dict) else None
        if isinstance(name, str):
            first.setdefault(name, path)
    assert len(first) >= 20 and set(first) <= set(METHOD_CONFIGS.names())
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, *map(str, first.values())], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result == {"torch": False, "methods": False}, f"reading the configs of {sorted(first)} imported {result}"
