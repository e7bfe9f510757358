"""Layout (ARCHITECTURE.md): few top-level modules, layers that import one way, the model's rules
in one module both engines call, no function over 100 lines, old import paths kept."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "egpt_sim"
LAYERS = ("traces", "whatif", "sim", "fast", "serving", "analysis")  # each imports only from those before it
MAX_TOP_MODULES = 12
MAX_FUNCTION_LINES = 100


def _modules(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "data" not in p.relative_to(folder).parts)


def _imports(path: Path):
    """(target module, line) of every import in ``path``, relative ones resolved."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = rel[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            yield mod, node.lineno
            for a in node.names:  # ``from egpt_sim.x import module``
                yield f"{mod}.{a.name}", node.lineno


def test_at_most_twelve_modules_at_the_top_of_egpt_sim():
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at the top of egpt_sim/: {top}"


def test_every_layer_is_a_package_and_nothing_else_is_one():
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert packages == set(LAYERS), packages ^ set(LAYERS)


def test_egpt_sim_never_imports_measure_or_torch():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in _modules(PKG) for mod, line in _imports(p)
           if mod.split(".")[0] in ("measure", "torch", "transformers")]
    assert not bad, bad


def test_measure_imports_only_the_trace_layer_of_egpt_sim():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}" for p in _modules(ROOT / "measure")
           for mod, line in _imports(p) if mod.startswith("egpt_sim")
           and not (mod == "egpt_sim.traces" or mod.startswith("egpt_sim.traces."))]
    assert not bad, bad


def test_layers_import_only_from_layers_below():
    bad = []
    for p in _modules(PKG):
        parts = p.relative_to(PKG).parts
        if len(parts) < 2:
            continue  # top level: cli, the public API and the aliases may use every layer
        layer = LAYERS.index(parts[0])
        for mod, line in _imports(p):
            m = mod.split(".")
            if m[0] == "egpt_sim" and len(m) > 1 and m[1] in LAYERS and LAYERS.index(m[1]) > layer:
                bad.append(f"{p.relative_to(ROOT)}:{line} ({parts[0]}) imports {mod}")
    assert not bad, bad


def test_no_function_over_100_lines():
    """Every function, method and nested function of egpt_sim/ and measure/, decorators included."""
    long = []
    for folder in (PKG, ROOT / "measure"):
        for p in _modules(folder):
            for n in ast.walk(ast.parse(p.read_text())):
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([n.lineno] + [d.lineno for d in n.decorator_list])
                    if n.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                        long.append(f"{p.relative_to(ROOT)}:{n.lineno} {n.name}: {n.end_lineno - first + 1} lines")
    assert not long, long


@pytest.mark.parametrize("module", ["sim/processes.py", "sim/strategies.py", "sim/gpu.py", "sim/budget.py",
                                    "sim/runner.py", "fast/window.py", "fast/sequential.py", "fast/batch.py"])
def test_both_engines_call_the_shared_rules(module):
    """The rules the SimPy model and the fast engine share live in egpt_sim/sim/rules.py."""
    mods = {mod for mod, _ in _imports(PKG / module)}
    assert "egpt_sim.sim.rules" in mods or "egpt_sim.sim.rules.contention_for" in mods, module


@pytest.mark.parametrize("alias, real", [
    ("egpt_sim.schema", "egpt_sim.traces.schema"),
    ("egpt_sim.acceptance", "egpt_sim.traces.acceptance"),
    ("egpt_sim.report", "egpt_sim.analysis.report"),
    ("egpt_sim.validation", "egpt_sim.analysis.validation"),
    ("egpt_sim.notebooks", "egpt_sim.analysis.notebooks"),
])
def test_old_import_paths_are_the_moved_modules(alias, real):
    assert importlib.import_module(alias) is importlib.import_module(real)


def test_the_trace_contract_imports_without_simpy_or_torch():
    code = ("import sys; sys.modules['simpy'] = None; sys.modules['torch'] = None\n"
            "from egpt_sim import schema, acceptance\n"
            "from egpt_sim.traces import schema as s2\n"
            "assert schema is s2 and acceptance.TraceAcceptance\n"
            "assert 'simpy' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_api_names_resolve():
    import egpt_sim as E

    for name in E.__all__:
        assert getattr(E, name) is not None, name
