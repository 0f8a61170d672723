"""The shape of the house (docs/architecture.md), checked from the source: tracklink's modules import each
other without a cycle, the layers point one way, imports inside functions are the deliberately lazy ones,
and the event list has one source.

Imports are read from the source files (``ast``), so imports inside functions count as much as the ones at
the top. An import of a package's own parent (``from . import hookspecs`` inside ``tracklink``) is not a
dependency between modules: Python always initialises the parent package first.
"""

from __future__ import annotations

import ast
import inspect
from collections import defaultdict
from pathlib import Path

import pytest

import tracklink
from tracklink import hookspecs
from tracklink.callback import TrainerCallback
from tracklink.events import EVENTS, EXTRAS, STANDARD_ARGS
from tracklink.handler import CallbackHandler

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"core": "tracklink", "integrations": "tracklink.integrations", "trainer": "tracklink.trainer"}

#: Imports between tracklink's own modules that stay inside functions, each for a reason.
LAZY_IMPORTS = {
    ("tracklink", "tracklink.resolve"): "report_to resolution reads package metadata: loaded on first use",
    ("tracklink", "tracklink.run"): "the run API resolves report_to (package metadata): loaded on first use",
    ("tracklink.tracker", "tracklink.registry"): "declared_environment() reads entry points (package metadata)",
    ("tracklink.trainer.arguments", "tracklink.trainer.distributed"): "device selection imports torch; the "
    "arguments module does not",
    ("tracklink.trainer.commands", "tracklink.trainer.demo"): "the demo imports torch; `tracklink --help` must not",
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
    names_from_source = len(submodules) < len(node.names)
    return submodules + ([source] if names_from_source and source in MODULES else [])


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, the imports inside functions), as module -> imported modules, parents left out."""
    every: dict[str, set[str]] = defaultdict(set)
    inner: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.stem == "__init__"
        in_functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node, is_package):
                    if target == module or module.startswith(target + "."):
                        continue  # the module itself, or a parent package (initialised first anyway)
                    every[module].add(target)
                    if id(node) in in_functions:
                        inner[module].add(target)
    return every, inner


EVERY, INNER = _imports()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(MODULES):
        if node not in index:
            visit(node)
    return found


def test_the_import_reader_sees_imports_inside_functions() -> None:
    assert "tracklink.trainer.demo" in INNER["tracklink.trainer.commands"]
    assert "tracklink.handler" in EVERY["tracklink.run"]


def test_no_import_cycle() -> None:
    assert _cycles(EVERY) == []


def test_layers_point_one_way() -> None:
    core = [m for m in MODULES if not m.startswith(("tracklink.integrations", "tracklink.trainer"))]
    wrong = [(m, t) for m in core for t in EVERY[m] if t.startswith(("tracklink.integrations", "tracklink.trainer"))]
    wrong += [(m, t) for m in MODULES if m.startswith("tracklink.integrations")
              for t in EVERY[m] if t.startswith("tracklink.trainer")]
    wrong += [(m, t) for m in MODULES if m.startswith("tracklink.trainer")
              for t in EVERY[m] if t.startswith("tracklink.integrations")]
    assert wrong == []


def test_imports_inside_functions_are_the_deliberately_lazy_ones() -> None:
    inner = {(module, target) for module, targets in INNER.items() for target in targets}
    assert inner == set(LAZY_IMPORTS), "a new import inside a function: move it to the top, or add it with its reason"


# -- one event list ---------------------------------------------------------------------------------


def test_the_event_list_is_read_from_the_hook_specifications() -> None:
    specs = [name for name, value in vars(hookspecs).items() if hasattr(value, "tracklink_spec")]
    assert list(EVENTS) == specs
    for event in EVENTS:
        params = tuple(inspect.signature(getattr(hookspecs, event)).parameters)
        assert params == STANDARD_ARGS + EXTRAS.get(event, ()), event


def test_trainer_callback_has_a_method_per_event() -> None:
    methods = {name for name in vars(TrainerCallback) if name.startswith("on_")}
    assert methods == set(EVENTS)


def test_the_handler_fires_every_event() -> None:
    for event in EVENTS:
        assert callable(getattr(CallbackHandler, event, None)), event
    handler = CallbackHandler(require_flow=False)
    seen = []

    class Everything:
        pass

    for event in EVENTS:
        setattr(Everything, event, tracklink.hookimpl(lambda self, state, _e=event: seen.append(_e)))
    handler.add_callback(Everything())
    state, control = tracklink.TrainerState(), tracklink.TrainerControl()
    for event in EVENTS:
        getattr(handler, event)(None, state, control)
    assert seen == list(EVENTS)


def test_the_transformers_bridge_forwards_every_event_transformers_fires() -> None:
    transformers = pytest.importorskip("transformers")
    from tracklink.integrations.transformers import TracklinkBridge

    fired = {name for name in vars(transformers.TrainerCallback) if name.startswith("on_")}
    assert fired <= set(EVENTS)
    for event in fired:
        assert getattr(TracklinkBridge, event) is not getattr(transformers.TrainerCallback, event), event
