"""The import rule, walked over the source (every import statement, module-level or inside a function):

  offload (shared core)  <  traces, runtime  <  sim  <  validate  <  benchmarks

A package imports only packages to its left (traces and runtime not each other), no file takes part in an import
cycle, and the core imports neither simpy, plotly nor torch (a GPU machine with torch alone loads it; the
simulator's engine needs simpy, the runtime needs torch).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"offload": 0, "traces": 1, "runtime": 1, "sim": 2, "validate": 3, "benchmarks": 4}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYER:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    return mods


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported name, line) for every absolute import in ``path``; ``from a import b`` gives ``a.b``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (``offload.policies.make_policy`` -> ``offload.policies``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


EDGES = {m: {(t, line) for n, line in _imports(p) if (t := _resolve(n)) and t != m} for m, p in MODULES.items()}


def test_the_walk_sees_the_project():
    assert {"offload.model_spec", "offload.policies.residency", "sim.engine", "runtime.expert_store",
            "traces.synthetic", "validate.compare"} <= set(MODULES)
    assert ("offload.errors", 11) in {(t, l) for t, l in EDGES["offload.policies"]}


def test_packages_import_only_downward():
    bad = [f"{m}:{line} imports {t}" for m, out in EDGES.items() for t, line in out
           if (a := m.split(".")[0]) != (b := t.split(".")[0]) and LAYER[b] >= LAYER[a]]
    assert not bad, bad


def test_runtime_and_traces_import_nothing_from_sim():
    bad = [f"{m} imports {t}" for m, out in EDGES.items() for t, _ in out
           if m.split(".")[0] in ("runtime", "traces") and t.startswith("sim")]
    assert not bad, bad


def _cycles(edges: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(t for t, _ in edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(t for t, _ in edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def test_no_file_cycles():
    assert _cycles(EDGES) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {("b", 1)}, "b": {("c", 1)}, "c": {("a", 1)}, "d": {("a", 1)}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("heavy", ["simpy", "plotly", "torch"])
def test_core_imports_no_simulator_plotting_or_torch(heavy):
    bad = [f"{m}:{line}" for m, p in MODULES.items() if m.startswith("offload")
           for name, line in _imports(p) if name.split(".")[0] == heavy]
    assert not bad, bad
