"""The layering rule of docs/architecture.md, enforced on the source (no import is executed):
what may import what, no import cycles, and the facts that live in one place only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "pipeline"

# module (or package prefix) -> layer; the longest prefix wins
LAYER_OF = {
    "pipeline": "base",  # the package itself: __version__ and lazy names only
    "pipeline.precision": "base",
    "pipeline.metrics": "base",
    "pipeline.plots": "base",
    "pipeline.surveys": "base",
    "pipeline._ray": "base",
    "pipeline._malloc": "base",
    "pipeline._reaper": "base",
    "pipeline.io": "io",
    "pipeline.models": "models",
    "pipeline.simulate": "simulate",
    "pipeline.stages": "stages",
    "pipeline.compose": "stages",
    "pipeline.train": "train",
    "pipeline.run": "run",
    "pipeline.demo": "run",
    "pipeline.cutout": "run",
    "pipeline.gallery": "run",
    "pipeline.evaluate": "run",
    "pipeline.mine": "run",
    "pipeline.cli": "cli",
}
# layer -> the layers it may import from (its own included)
MAY_IMPORT = {
    "base": {"base"},
    "io": {"base", "io"},
    "models": {"base", "io", "models"},
    "simulate": {"base", "io", "simulate"},
    "stages": {"base", "io", "models", "stages"},
    "train": {"base", "io", "models", "train"},
    "run": {"base", "io", "models", "simulate", "stages", "run"},
    "cli": set(LAYER_OF.values()),
}
# Import cycles that exist and are known; each names its owner. The test fails when one of
# them is gone too, so that this list stays true.
KNOWN_CYCLES: set[frozenset] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a pipeline module in ``path``, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:  # "from pipeline import metrics" imports a module
                sub = f"{node.module}.{a.name}"
                found.append((node.lineno, sub if sub in MODULES else node.module))
    return [(line, m) for line, m in found if m == "pipeline" or m.startswith("pipeline.")]


def _layer(module: str) -> str:
    prefix = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[prefix]


def test_every_module_has_a_layer():
    assert {m: _layer(m) for m in MODULES}  # max() of an empty prefix list would raise


def test_layers_import_only_from_below():
    bad = [f"{MODULES[m].relative_to(PKG.parent)}:{line}: {_layer(m)} imports {dep} ({_layer(dep)})"
           for m in MODULES for line, dep in _imports(MODULES[m])
           if _layer(dep) not in MAY_IMPORT[_layer(m)]]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", ["models", "io"])
def test_models_and_io_import_nothing_from_train_stages_run_or_cli(layer):
    deps = {dep for m in MODULES if _layer(m) == layer for _, dep in _imports(MODULES[m])}
    assert not {_layer(d) for d in deps} & {"train", "stages", "run", "cli"}, deps


def _cycles() -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: {d for _, d in _imports(p) if d in MODULES and d != m} for m, p in MODULES.items()}
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_but_the_known_ones():
    cycles = _cycles()
    assert not cycles - KNOWN_CYCLES, f"new import cycles: {[sorted(c) for c in cycles - KNOWN_CYCLES]}"
    gone = KNOWN_CYCLES - cycles
    assert not gone, f"cut, remove from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


def _source_outside(*inside: str) -> dict[str, str]:
    return {str(p.relative_to(PKG.parent)): p.read_text() for m, p in MODULES.items()
            if not any(m == i or m.startswith(i + ".") for i in inside)}


def test_model_names_live_in_pipeline_models():
    from pipeline.models import list_models

    names = list_models()
    assert len(names) >= 5
    hits = [(f, n) for f, text in _source_outside("pipeline.models").items() for n in names
            if n in text]
    assert not hits, hits


def test_fits_files_are_opened_by_pipeline_io_only():
    hits = []
    for m, path in MODULES.items():
        if _layer(m) == "io":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                mod = node.module if isinstance(node, ast.ImportFrom) else ""
                if mod == "astropy.io.fits" or "astropy.io.fits" in names or (
                        mod == "astropy.io" and "fits" in names):
                    hits.append(f"{m}:{node.lineno}")
    assert not hits, hits


# the simulator's own file hasher, to become pipeline.io.files.sha256_file when the simulator
# changes hands back (manifest hashes are the same bytes either way)
KNOWN_HASHERS: set[str] = set()


def test_one_file_hasher():
    hits = {f for f, text in _source_outside("pipeline.io.files").items() if "sha256(" in text}
    assert hits == KNOWN_HASHERS, hits
