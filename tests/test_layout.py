"""The package rules of src/label_refinery (issue 23): which part may import which, no import
cycles, and a size budget for functions, modules and signatures.

Every module is parsed with ``ast``; every import in it (at module level and inside functions,
absolute and relative) is resolved to a module of the package. RANKS below is the architecture:
an import goes to a strictly lower rank, or stays inside its own package folder, or goes from one
rank-0 vocabulary module to another.

KNOWN_VIOLATIONS lists what breaks the rules today, by name. A check with known violations is an
expected failure (strict): it still fails outright if a violation not in the list appears, or if
a listed one is gone (then delete its line here). When the list is empty every check is a plain test.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from tests.harness import REPO

PACKAGE = "label_refinery"
SRC = REPO / "src" / PACKAGE

# The rank of each part of the package, lowest first. A part is a top-level module or a package
# folder (all of whose modules share its rank).
RANKS: dict[str, float] = {
    # the vocabulary: words every layer may use (they may use each other)
    "errors": 0,
    "_version": 0,
    "files": 0,
    "locks": 0,  # one writer per folder, nothing clobbered (issue 28)
    "typed": 0,
    "losses": 0,
    "config": 0,
    "distributed": 0,
    # what is trained, and on what
    "data": 1,
    "models": 1,
    "checkpoint": 1.5,  # builds a checkpoint's model: imports models
    "labels": 2,  # label sources: ground truth, live refineries, label stores
    "loop": 2.5,  # the pieces of the trainer for your own loop (docs/own-loop.md)
    "training": 3,  # generations and chains
    "tools": 4,  # analyze, audit, export, report: read finished runs
    "study": 5,  # experiments: arms x seeds of chains
    "cli": 6,
    # the package face (label_refinery/__init__.py) and python -m label_refinery
    "__init__": 7,
    "__main__": 7,
}
VOCABULARY = {part for part, rank in RANKS.items() if rank == 0}
ENTRY_POINTS = {"__init__", "__main__"}  # the only modules outside cli/ that may import cli/

# What breaks the rules, "CHECK: what", one per line, each with the issue that will mend it. Empty:
# every rule holds (issue 23). Add a line only knowingly; the check then says when it is mended.
KNOWN_VIOLATIONS: set[str] = set()

MAX_FUNCTION_LINES = 60  # def to the end of its body, docstring included
MAX_MODULE_LINES = 400
MAX_PARAMETERS = 10  # positional and keyword-only, not self/cls, not *args/**kwargs


class KnownViolation(AssertionError):
    """Raised by a check whose violations are exactly the known ones: its expected failure."""


def known(check: str):
    """Mark a check as an expected failure (strict) while KNOWN_VIOLATIONS lists some of its violations."""
    listed = sorted(v for v in KNOWN_VIOLATIONS if v.split(": ", 1)[0] == check)
    if not listed:
        return lambda test: test
    return pytest.mark.xfail(strict=True, raises=KnownViolation, reason=f"known violations (issue 23): {'; '.join(listed)}")


def enforce(check: str, found: dict[str, str]) -> None:
    """``found``: violation name -> readable message. New violations fail; so do listed ones that are gone."""
    listed = {v for v in KNOWN_VIOLATIONS if v.split(": ", 1)[0] == check}
    new = sorted(message for name, message in found.items() if name not in listed)
    assert not new, f"{len(new)} new violation(s) of {check!r}:\n" + "\n".join(new)
    gone = sorted(listed - found.keys())
    assert not gone, f"fixed: delete from KNOWN_VIOLATIONS in {Path(__file__).name}: {gone}"
    if found:
        raise KnownViolation(f"{len(found)} known violation(s) of {check!r}:\n" + "\n".join(sorted(found.values())))


# ---- the package's modules and their imports ----


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted, relative to the package ("training.runfolder", "__init__")
    target: str  # the imported module of the package, the same way
    line: int
    code: str  # the statement, as written
    module_level: bool  # runs when the module is imported (not inside a function)

    @property
    def where(self) -> str:
        return f"{path_of(self.source)}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: `{self.code}` ({self.source} -> {self.target})"


def dotted(path: Path) -> str:
    """src/label_refinery/training/state.py -> "training.state"; a package's __init__.py -> the
    package ("data"); the face label_refinery/__init__.py -> "__init__"."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {dotted(p): p for p in sorted(SRC.rglob("*.py"))}


def path_of(module: str) -> str:
    return str(modules()[module].relative_to(REPO))


def part(module: str) -> str:
    """The rank-bearing part of a module: its top-level module or package folder."""
    return module.split(".")[0]


def is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def absolute(module: str) -> str:
    return PACKAGE if module == "__init__" else f"{PACKAGE}.{module}"


def relative(name: str) -> str | None:
    """label_refinery.x.y -> "x.y"; label_refinery -> "__init__"; None outside the package."""
    if name == PACKAGE:
        return "__init__"
    if name.startswith(PACKAGE + "."):
        return name[len(PACKAGE) + 1 :]
    return None


def resolve(source: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules that the import statement ``node`` in module ``source`` loads by name."""
    mods = modules()
    targets: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = relative(alias.name)
            while name is not None and name not in mods and "." in name:
                name = name.rsplit(".", 1)[0]  # import label_refinery.a.b where b is a name: a
            if name is not None:
                targets.append(name if name in mods else "__init__")
        return targets
    if node.level:  # from .x import y, from .. import y
        package = absolute(source) if is_package(source) else absolute(source).rsplit(".", 1)[0]
        base_parts = package.split(".")
        if node.level > 1:
            base_parts = base_parts[: -(node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    base_rel = relative(base)
    if base_rel is None:
        return []
    for alias in node.names:
        sub = f"{base_rel}.{alias.name}" if base_rel != "__init__" else alias.name
        targets.append(sub if sub in mods else base_rel)  # a submodule, or a name defined in the base module
    return targets


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


@cache
def imports() -> tuple[Import, ...]:
    found = []
    for source, path in modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            scope, inside_function = node, False
            while scope in parents:
                scope = parents[scope]
                inside_function |= isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            runs_on_import = not inside_function and not _in_type_checking(node, parents)
            for target in resolve(source, node):
                if target != source:
                    found.append(Import(source, target, node.lineno, ast.unparse(node), runs_on_import))
    return tuple(found)


def allowed(imp: Import) -> bool:
    src, dst = part(imp.source), part(imp.target)
    if src == dst and (is_package(src) or src in VOCABULARY):
        return True  # inside one package folder (a vocabulary module never imports itself)
    if src in VOCABULARY and dst in VOCABULARY:
        return True
    return RANKS[dst] < RANKS[src]


# ---- the resolver itself ----


def test_the_resolver_reads_imports_as_python_does():
    def targets(source: str, code: str) -> list[str]:
        return resolve(source, ast.parse(code).body[0])

    assert targets("training.chain", "from .. import distributed") == ["distributed"]  # a module of the package
    assert targets("training.runfolder", "from .. import __version__") == ["__init__"]  # a name of the face
    assert targets("training.chain", "from .generation import load_data") == ["training.generation"]
    assert targets("training.generation", "from . import state") == ["training.state"]
    assert targets("labels.store", "from . import refine") == ["labels"]  # a name of labels/__init__.py
    assert targets("labels", "from ..checkpoint import load_checkpoint") == ["checkpoint"]  # from a package's __init__
    assert targets("data", "from . import digits, scenes") == ["data.digits", "data.scenes"]
    assert targets("cli.commands", "from ..training.build import bake_labels") == ["training.build"]
    assert targets("tools.audit", "import label_refinery.training.state as s") == ["training.state"]
    assert targets("tools.audit", "from label_refinery.data import load_dataset") == ["data"]
    assert targets("__main__", "from .cli import main") == ["cli"]
    assert targets("training.engine", "import torch.nn.functional as F") == []
    assert {i.target for i in imports() if i.source == "checkpoint"} >= {"errors", "models"}  # models: inside build_model
    assert any(not i.module_level for i in imports())


def test_every_module_has_a_rank():
    unranked = sorted({part(m) for m in modules()} - RANKS.keys())
    assert not unranked, f"give these parts of {PACKAGE} a rank in RANKS ({Path(__file__).name}): {unranked}"
    assert {"errors", "config", "data", "models", "labels", "training", "tools", "study", "cli", "__init__"} <= set(
        map(part, modules())
    )


# ---- the rules ----


@known("ranks")
def test_imports_go_down_the_ranks():
    found = {}
    for imp in imports():
        if not allowed(imp):
            src, dst = part(imp.source), part(imp.target)
            found[f"ranks: {imp.source} -> {imp.target}"] = f"{imp}: {src} (rank {RANKS[src]}) imports {dst} (rank {RANKS[dst]})"
    enforce("ranks", found)


@known("training")
def test_training_never_imports_tools_study_or_cli():
    found = {
        f"training: {imp.source} -> {imp.target}": f"{imp}: training/ imports {part(imp.target)}/"
        for imp in imports()
        if part(imp.source) == "training" and part(imp.target) in {"tools", "study", "cli"}
    }
    enforce("training", found)


@known("cli")
def test_only_the_entry_points_import_cli():
    found = {
        f"cli: {imp.source} -> {imp.target}": f"{imp}: only cli/, __main__.py and the package face import cli/"
        for imp in imports()
        if part(imp.target) == "cli" and part(imp.source) not in {"cli", *ENTRY_POINTS}
    }
    enforce("cli", found)


@known("face")
def test_nothing_imports_the_package_face():
    found = {
        f"face: {imp.source} -> {imp.target}": f"{imp}: imports the package face {PACKAGE}/__init__.py"
        for imp in imports()
        if imp.target == "__init__"
    }
    enforce("face", found)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@known("cycles")
def test_no_import_cycles():
    edges: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], Import] = {}
    for imp in imports():
        if imp.module_level:
            edges.setdefault(imp.source, set()).add(imp.target)
            lines.setdefault((imp.source, imp.target), imp)
    found = {}
    for component in _cycles(edges):
        inside = [str(lines[a, b]) for a in component for b in sorted(edges.get(a, ())) if b in component]
        found[f"cycles: {' <-> '.join(component)}"] = f"a cycle of module-level imports: {', '.join(component)}:\n  " + "\n  ".join(inside)
    enforce("cycles", found)


# ---- the budget ----


def _functions(tree: ast.AST):
    """(qualified name, node) of every function and method, nested ones included."""

    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from walk(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    return walk(tree, "")


def parameter_count(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    positional = fn.args.posonlyargs + fn.args.args
    if positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    return len(positional) + len(fn.args.kwonlyargs)


def test_the_budget_counts_as_documented():
    tree = ast.parse("class A:\n    def f(self, a, /, b, *args, c, d=1, **kw):\n        '''doc'''\n\n        return a\n")
    ((name, fn),) = list(_functions(tree))
    assert name == "A.f" and parameter_count(fn) == 4 and fn.end_lineno - fn.lineno + 1 == 4  # a, b, c, d; docstring counted


@known("module lines")
def test_no_module_over_400_lines():
    found = {}
    for module, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_MODULE_LINES:
            found[f"module lines: {module}"] = f"{path_of(module)}: {n} lines (budget {MAX_MODULE_LINES})"
    enforce("module lines", found)


@known("function lines")
def test_no_function_over_60_lines():
    found = {}
    for module, path in modules().items():
        for name, fn in _functions(ast.parse(path.read_text())):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                found[f"function lines: {module}:{name}"] = f"{path_of(module)}:{fn.lineno}: {name} has {n} lines (budget {MAX_FUNCTION_LINES})"
    enforce("function lines", found)


@known("parameters")
def test_no_signature_over_10_parameters():
    found = {}
    for module, path in modules().items():
        for name, fn in _functions(ast.parse(path.read_text())):
            n = parameter_count(fn)
            if n > MAX_PARAMETERS:
                found[f"parameters: {module}:{name}"] = f"{path_of(module)}:{fn.lineno}: {name} takes {n} parameters (budget {MAX_PARAMETERS})"
    enforce("parameters", found)
