"""The packages stand in floors and import only downwards, with no cycles between modules.

ground (pipeline.ground) <- data_prep, training (which may use data_prep's shard format only)
<- launch <- pipeline (CLI, root config, plan, executors, report). The scan reads every module's
imports with `ast`, the lazy ones inside functions and those under `if TYPE_CHECKING:` included, so
neither a late `import` nor an annotation-only one can hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "data_prep", "training", "launch")
FLOOR = {"ground": 0, "data_prep": 1, "training": 1, "launch": 2, "pipeline": 3}
TRAINING_MAY_USE = {"data_prep.shards"}  # the shard format is the contract between prep and training


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> str:
    if module == "pipeline.ground" or module.startswith("pipeline.ground."):
        return "ground"
    return module.split(".")[0]


def project_imports(path: Path) -> set[str]:
    """Project modules `path` imports, resolved to the deepest module that exists as a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.add(existing_module(name))
    return found - {module_name(path)}


def existing_module(name: str) -> str:
    parts = name.split(".")
    while parts:
        base = REPO.joinpath(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    return {module_name(path): project_imports(path) for path in files}


def violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imports in sorted(edges.items()):
        floor = floor_of(module)
        for target in sorted(imports):
            to = floor_of(target)
            if target in (module.rsplit(".", 1)[0], "pipeline") and to == "pipeline":
                continue  # a package's own __init__
            upward = FLOOR[to] > FLOOR[floor] or (FLOOR[to] == FLOOR[floor] and to != floor)
            if floor == "training" and target in TRAINING_MAY_USE:
                upward = False
            if upward:
                found.append(f"{module} ({floor}) imports {target} ({to})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """Each import cycle once, as the chain of modules that closes it."""
    found, state = [], dict.fromkeys(edges, 0)  # 0 new, 1 on the stack, 2 done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target not in state:
                continue
            if state[target] == 1:
                found.append(" -> ".join(stack[stack.index(target) :] + [module, target]))
            elif state[target] == 0:
                visit(target, stack + [module])
        state[module] = 2

    for module in sorted(edges):
        if state[module] == 0:
            visit(module, [])
    return found


def test_imports_run_down_the_floors() -> None:
    assert violations(graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_ground_imports_nothing_of_the_project() -> None:
    ground = {m: i for m, i in graph().items() if floor_of(m) == "ground"}
    assert ground and all(floor_of(target) == "ground" for imports in ground.values() for target in imports)


@pytest.mark.parametrize(
    "module, imports, expected",
    [
        ("data_prep.books", {"pipeline.config"}, "data_prep.books (data_prep) imports pipeline.config (pipeline)"),
        (
            "training.engine",
            {"data_prep.tokenizer"},
            "training.engine (training) imports data_prep.tokenizer (data_prep)",
        ),
        (
            "launch.sbatch",
            {"pipeline.executors.slurm"},
            "launch.sbatch (launch) imports pipeline.executors.slurm (pipeline)",
        ),
    ],
)
def test_the_scan_names_an_upward_import(module: str, imports: set[str], expected: str) -> None:
    assert violations({module: imports}) == [expected]


def test_the_scan_finds_a_cycle() -> None:
    assert cycles({"training.a": {"training.b"}, "training.b": {"training.a"}}) == [
        "training.a -> training.b -> training.a"
    ]
    assert violations({"training.engine": {"data_prep.shards", "pipeline.ground.errors"}}) == []
