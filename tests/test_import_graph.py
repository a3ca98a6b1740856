"""The package's import graph, read from the source with ``ast`` (nothing is imported):

- no cycle among module-level imports of ``dias_dist`` modules;
- imports of the package's own modules inside functions only where listed in ``FUNCTION_LEVEL`` with the
  reason (a heavy optional dependency, or a command whose ``-h`` must not import torch / MLflow); a
  listed import that no longer exists fails too, so the list stays true;
- no upward imports: library code never imports an entry point, only the entry points and RPST import the
  trainer, and ``config`` and the run package import nothing of the layers above them.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dias_dist"

# (importer, imported): why the import sits inside a function
FUNCTION_LEVEL = {
    ("dias_dist.config", "dias_dist.metrics"):
        "metrics imports scipy and scikit-image; config needs the metric names only to check eval.select_metric",
    ("dias_dist.data.loader", "dias_dist.data.strong_augment"):
        "scipy.ndimage, for the strong augmentation of semi-supervised methods only",
    ("dias_dist.evaluation.evaluate", "dias_dist.data.loader"):
        "WebDataset: the prediction path (dias predict, the MLflow pyfunc model) uses evaluate without shards",
    ("dias_dist.models.convgru", "dias_dist.kernels.convgru_triton"): "Triton (optional, GPU only) when gru_impl asks for it",
    ("dias_dist.predict.mlflow_model", "dias_dist.predict.pyfunc_model"): "MLflow's pyfunc, at the end of training only",
    ("dias_dist.run.folder", "dias_dist.dist"):
        "torch: cli imports describe_os_error from here, and dias --version must import no torch",
    ("dias_dist.demo", "dias_dist.run.checkpoint"): "the demo drives dias in subprocesses; torch only to read final.pt",
    # command modules: `dias COMMAND -h` answers without importing torch / MLflow (cli imports the module for -h)
    ("dias_dist.train_cli", "dias_dist.trainer"): "command module: dias train -h imports no torch",
    ("dias_dist.evaluation.baseline", "dias_dist.data.loader"): "command module: dias baseline -h imports no torch",
    ("dias_dist.evaluation.baseline", "dias_dist.evaluation.evaluate"): "command module: dias baseline -h imports no torch",
    ("dias_dist.evaluation.baseline", "dias_dist.data.location"): "command module: dias baseline -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.model"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.readers"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.writers"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.progress"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.frames"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.fov"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.postprocess"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.prepare"): "command module: dias predict -h imports no torch",
    ("dias_dist.predict.cli", "dias_dist.predict.subtract"): "command module: dias predict -h imports no torch",
    ("dias_dist.semi.rpst_cli", "dias_dist.semi.rpst"): "command module: dias rpst -h imports no torch",
    ("dias_dist.report", "dias_dist.semi.rpst"): "command module: dias report -h imports no torch",
    ("dias_dist.report", "dias_dist.run.track"): "command module: dias report -h imports no torch or MLflow",
    # tune.py's driver process parses the grid and starts Ray; torch and MLflow load in the trials
    ("dias_dist.sweep", "dias_dist.trainer"): "Ray Tune driver (tune.py) imports no torch; the trial does",
    ("dias_dist.sweep", "dias_dist.run.checkpoint"): "Ray Tune driver (tune.py) imports no torch; the trial does",
    ("dias_dist.sweep", "dias_dist.run.folder"): "Ray Tune driver (tune.py) imports no torch; the trial does",
    ("dias_dist.sweep", "dias_dist.run.elastic"): "Ray Tune driver (tune.py) imports no torch; the trial does",
    ("dias_dist.sweep", "dias_dist.semi.rpst"): "Ray Tune driver (tune.py) imports no torch; the trial does",
    ("dias_dist.sweep", "dias_dist.methods"): "Ray Tune driver (tune.py) imports no torch; the trial does",
    ("dias_dist.sweep", "dias_dist.sweep_report"): "Ray Tune driver (tune.py): MLflow once the sweep's parent run opens",
    ("dias_dist.sweep", "dias_dist.run.track"): "Ray Tune driver (tune.py): MLflow once the sweep's parent run opens",
    ("dias_dist.sweep_report", "dias_dist.run.track"): "MLflow, once the sweep's parent run opens (imported by sweep)",
    # tune.py folds: the driver checks the partition, starts Ray, then evaluates the folds' ensemble itself
    ("dias_dist.cv", "dias_dist.data.loader"): "Ray Tune driver (tune.py folds): torch only to check the partition",
    ("dias_dist.cv", "dias_dist.run.track"): "Ray Tune driver (tune.py folds): MLflow once the sweep has run",
    ("dias_dist.cv", "dias_dist.evaluation.evaluate"): "Ray Tune driver (tune.py folds): torch for the ensemble only",
    ("dias_dist.cv", "dias_dist.evaluation.tables"): "Ray Tune driver (tune.py folds): the ensemble's metrics only",
    ("dias_dist.cv", "dias_dist.predict.ensemble"): "Ray Tune driver (tune.py folds): torch for the ensemble only",
    ("dias_dist.cv", "dias_dist.predict.model"): "Ray Tune driver (tune.py folds): torch for the ensemble only",
    ("dias_dist.predict.export_cli", "dias_dist.predict.ensemble"): "command module: dias export -h imports no torch",
    ("dias_dist.predict.export_cli", "dias_dist.models"): "command module: dias export -h imports no torch",
    ("dias_dist.predict.export_cli", "dias_dist.run.atomic"): "command module: dias export -h imports no torch",
    ("dias_dist.sweep_report", "dias_dist.evaluation.tables"): "imported by the Ray Tune driver: no torch until the summary",
}

ENTRY_POINTS = {"dias_dist.cli", "dias_dist.train_cli", "dias_dist.train", "dias_dist.demo", "dias_dist.sweep",
                "dias_dist.sweep_report", "dias_dist.report"}
LIBRARY = ("dias_dist.run", "dias_dist.data", "dias_dist.models", "dias_dist.methods", "dias_dist.engine",
           "dias_dist.evaluation", "dias_dist.predict", "dias_dist.semi", "dias_dist.kernels", "dias_dist.config",
           "dias_dist.dist", "dias_dist.devices", "dias_dist.console", "dias_dist.progress", "dias_dist.metrics",
           "dias_dist.losses", "dias_dist.schedule", "dias_dist.curves", "dias_dist.stored_config", "dias_dist.trainer")
TRAINER_USERS = ENTRY_POINTS | {"dias_dist.semi.rpst"}  # RPST runs the trainer once per stage
# what the run package and config sit below: they never import these
ABOVE_RUN = ("dias_dist.trainer", "dias_dist.engine", "dias_dist.evaluation", "dias_dist.predict", "dias_dist.semi",
             *sorted(ENTRY_POINTS))
ABOVE_CONFIG = (*ABOVE_RUN, "dias_dist.run.", "dias_dist.models", "dias_dist.methods")
CONFIG_MAY_USE = {"dias_dist.run", "dias_dist.run.atomic"}  # the one way to write a file


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _targets(node: ast.ImportFrom | ast.Import, importer: str, is_package: bool) -> set[str]:
    """The dias_dist modules an import statement loads: the named module, a submodule named in
    ``from X import name``, and the packages above them (their ``__init__`` runs first)."""
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([node.module] if node.module else []))
        named = {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    found = set()
    for name in named:
        if name != "dias_dist" and not name.startswith("dias_dist."):
            continue
        parts = name.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(MODULES)
    own_packages = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    return found - own_packages  # a module's own packages are already being imported


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, (ast.Name, ast.Attribute)) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module-level edges, function-level (importer, imported) pairs) of every module of the package."""
    module_level: dict[str, set[str]] = {name: set() for name in MODULES}
    in_functions: set[tuple[str, str]] = set()
    for name, path in MODULES.items():
        is_package = path.name == "__init__.py"

        def walk(node, inside_function: bool):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _type_checking(child):
                    continue  # annotations only
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    targets = _targets(child, name, is_package)
                    if inside_function:  # the named modules (not the packages above them)
                        named = {t for t in targets if not any(o.startswith(t + ".") for o in targets)}
                        in_functions.update((name, target) for target in named if target != "dias_dist")
                    else:
                        module_level[name].update(targets)
                walk(child, inside_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        walk(ast.parse(path.read_text(), str(path)), False)
    return module_level, in_functions


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _all_edges() -> list[tuple[str, str]]:
    module_level, in_functions = _imports()
    return [(a, b) for a, targets in module_level.items() for b in targets] + sorted(in_functions)


def _within(name: str, prefixes) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def test_the_walk_sees_the_package():
    module_level, in_functions = _imports()
    assert len(MODULES) > 80 and "dias_dist.run.lifecycle" in MODULES
    assert {"dias_dist.run", "dias_dist.run.lifecycle"} <= module_level["dias_dist.trainer"]
    assert ("dias_dist.run.folder", "dias_dist.dist") in in_functions


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_module_level_imports():
    module_level, _ = _imports()
    assert _cycles(module_level) == []


def test_no_import_cycles_even_through_imports_inside_functions():
    module_level, in_functions = _imports()
    for importer, imported in in_functions:
        module_level[importer].add(imported)
    assert _cycles(module_level) == []


def test_imports_inside_functions_are_listed_with_their_reason():
    _, in_functions = _imports()
    unlisted = sorted(in_functions - set(FUNCTION_LEVEL))
    assert not unlisted, ("imports of the package's own modules inside functions; move them to the top of the "
                          f"module or add them to FUNCTION_LEVEL with the reason: {unlisted}")
    stale = sorted(set(FUNCTION_LEVEL) - in_functions)
    assert not stale, f"FUNCTION_LEVEL lists imports that no longer exist: {stale}"
    assert all(reason.strip() for reason in FUNCTION_LEVEL.values())


def test_no_upward_imports():
    wrong = []
    for importer, imported in _all_edges():
        if _within(importer, LIBRARY) and imported in ENTRY_POINTS:
            wrong.append((importer, imported, "library code imports an entry point"))
        if imported == "dias_dist.trainer" and importer not in TRAINER_USERS:
            wrong.append((importer, imported, "only the entry points and RPST run the trainer"))
        if _within(importer, ("dias_dist.run",)) and _within(imported, ABOVE_RUN):
            wrong.append((importer, imported, "the run package sits below the trainer, engines and consumers"))
        if importer == "dias_dist.config" and _within(imported, ABOVE_CONFIG) and imported not in CONFIG_MAY_USE:
            wrong.append((importer, imported, "config is the schema: it imports no component"))
    assert not wrong, wrong


def test_registries_import_only_what_models_and_methods_are_made_of():
    """The registries (and every model and method) never import the params module or anything of a run:
    what a model or method was built with is recorded where it is built (``models.constructor_args``)."""
    allowed = ("dias_dist.config", "dias_dist.models", "dias_dist.methods", "dias_dist.losses", "dias_dist.kernels")
    wrong = [(a, b) for a, b in _all_edges() if _within(a, ("dias_dist.models", "dias_dist.methods"))
             and not a.endswith("_cli")  # a command module that lives next to the models (dias tune-cpu)
             and b != "dias_dist" and not _within(b, allowed)]
    assert not wrong, wrong
