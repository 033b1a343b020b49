"""The import structure: no cycles anywhere in src/, layers that import only downwards (geometry
is pure science, experiments are wiring below the runner), every module importable on its own
terms, and a light command line (``geomlab --help`` / ``list`` never import torch, pandas or
matplotlib).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "pandas", "matplotlib", "numpy", "scipy")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "geomlab").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> geomlab modules it imports, at any depth (top level, TYPE_CHECKING blocks and
    imports inside functions alike: a lazy import is still a dependency)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*head, base] if base else head)
                # `from pkg import sub` imports the submodule; `from mod import name`, the module
                targets = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                targets = targets or {base}
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_src():
    graph = import_graph()
    assert "geomlab.experiments.base" in graph and "geomlab.config" in graph
    assert "geomlab.config" in graph["geomlab.experiments.base"]  # the edge points one way
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# Layering (docs: ARCHITECTURE "data flows down, imports point down"): package prefix -> the
# geomlab packages/modules it must not import, at any depth (function-level imports included).
# Geometry is the science on tensors and modules: no data loading, no experiment, no run
# directory, no file I/O, no command line. Experiments are wiring that the runner calls: they
# never reach up into the runner, the CLI or the other edges.
EDGES = ("geomlab.runner", "geomlab.cli", "geomlab.remeasure", "geomlab.sweep", "geomlab.report")
LAYERS: dict[str, tuple[str, ...]] = {
    "geomlab.geometry": (
        "geomlab.data", "geomlab.experiments", "geomlab.io", "geomlab.rundir", "geomlab.plots",
        "geomlab.training", "geomlab.config", *EDGES,
    ),
    "geomlab.experiments": EDGES,
    "geomlab.models": ("geomlab.experiments", *EDGES),
    "geomlab.data": ("geomlab.experiments", *EDGES),
}  # fmt: skip
# Known exceptions, each an edge owned elsewhere and named with why (none today).
KNOWN_LAYERING_EXCEPTIONS: set[tuple[str, str]] = set()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(
    graph: dict[str, set[str]], layers: dict[str, tuple[str, ...]] = LAYERS
) -> list[str]:
    """``importer -> imported`` for every import that points up a layer."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for layer, forbidden in layers.items()
        if _within(module, layer)
        for target in targets
        if any(_within(target, f) for f in forbidden)
        and (module, target) not in KNOWN_LAYERING_EXCEPTIONS
    )


def test_the_layering_check_finds_an_upward_import():
    graph = {
        "geomlab.geometry.spectral": {"geomlab.data.spiked", "geomlab.models.two_layer"},
        "geomlab.experiments.x": {"geomlab.runner", "geomlab.geometry.spectral"},
        "geomlab.geometrics": {"geomlab.runner"},  # a prefix is a package, not a string prefix
    }
    assert layering_violations(graph) == [
        "geomlab.experiments.x -> geomlab.runner",
        "geomlab.geometry.spectral -> geomlab.data.spiked",
    ]


def test_every_layer_imports_only_downwards():
    graph = import_graph()
    assert "geomlab.geometry.gd_tracking" in graph and "geomlab.remeasure" in graph
    assert "geomlab.experiments.lambda_control.experiment" in graph["geomlab.remeasure"]
    assert layering_violations(graph) == []
    testing = "geomlab.testing"  # test helpers: the library never depends on them
    assert [f"{m} -> {t}" for m, ts in graph.items() if not _within(m, testing)
            for t in ts if _within(t, testing)] == []  # fmt: skip


def test_no_experiment_imports_another():
    from geomlab.experiments import REGISTRY

    def family(module: str) -> str:  # a family is its module, or its package (lambda_control)
        package = module.rpartition(".")[0]
        return package if package != "geomlab.experiments" else module

    families = {family(entry.module) for entry in REGISTRY.values()}
    graph = import_graph()
    crossing = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for mine in families
        if _within(module, mine)
        for target in targets
        for other in families - {mine}
        if _within(target, other)
    )
    assert len(families) == len(REGISTRY) and crossing == []


def _python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_module_imports_in_a_fresh_interpreter():
    names = [name for name in _modules() if not name.endswith("__main__")]
    code = (
        "import importlib, json\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(len(" + repr(names) + ")))"
    )
    assert json.loads(_python(code)) == len(names)


def test_importing_the_cli_loads_no_heavy_module():
    code = f"import sys, geomlab.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    assert json.loads(_python(code).replace("'", '"')) == []


def test_help_and_list_load_no_heavy_module():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from geomlab.cli import app\n"
        "for args in (['--help'], ['list'], ['run', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "assert 'ng-pareto' in CliRunner().invoke(app, ['list']).output\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert json.loads(_python(code).replace("'", '"')) == []


def test_package_reexports_load_on_first_use():
    code = (
        "import sys, geomlab\n"
        "assert 'torch' not in sys.modules\n"
        "from geomlab import softmax_regression_fisher, fit_lambda\n"
        "from geomlab.geometry.curvature import softmax_regression_fisher as direct\n"
        "assert softmax_regression_fisher is direct and callable(fit_lambda)\n"
        "assert set(geomlab.__all__) <= set(dir(geomlab))\n"
        "print('ok')"
    )
    assert _python(code).strip() == "ok"


def test_every_geometry_module_declares_its_public_names_and_stays_small():
    """Issue 19: one concept a module, each with ``__all__`` and at most ~450 lines."""
    missing, large = [], []
    for name, path in _modules().items():
        if not name.startswith("geomlab.geometry"):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        declared = any(
            isinstance(node, ast.Assign | ast.AnnAssign)
            and any(getattr(t, "id", None) == "__all__" for t in
                    (node.targets if isinstance(node, ast.Assign) else [node.target]))
            for node in tree.body
        )  # fmt: skip
        if not declared:
            missing.append(name)
        if len(text.splitlines()) > 470:
            large.append(f"{name} ({len(text.splitlines())} lines)")
    assert not missing, f"geometry modules without __all__: {missing}"
    assert not large, f"geometry modules over ~450 lines: {large}"
