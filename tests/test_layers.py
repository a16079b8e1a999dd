"""Dependencies point one way: every import inside the package goes to the same floor or a lower one.

The floors (what README's "Layout" draws):

    5  cli, demo                       command lines and the embedded demo
    4  training, evaluation, data_prep  Lightning modules; benchmark runner, tables, figures; shard writers
    3  data, pipelines                  shard reading; inference
    2  io, models, evaluation.metrics   video files; nn.Modules; metrics (numpy/torch only)
    1  errors, utils, config, assets, prompts, overlay
"""

from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
ROOTS = {
    REPO / "src" / "vidiff": "vidiff",
    REPO / "data_prep": "vidiff.data_prep",
    REPO / "evaluation": "vidiff.evaluation",
}
FLOORS = {
    "errors": 1, "utils": 1, "config": 1, "assets": 1, "prompts": 1, "overlay": 1, "vidiff": 1,
    "io": 2, "models": 2, "evaluation.metrics": 2,
    "data": 3, "pipelines": 3,
    "training": 4, "evaluation": 4, "data_prep": 4,
    "cli": 5, "demo": 5, "app": 5,
}  # fmt: skip


def part_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "vidiff":
        return None
    if len(parts) == 1:
        return "vidiff"
    if parts[1] == "evaluation" and len(parts) > 2 and parts[2] == "metrics":
        return "evaluation.metrics"
    return parts[1]


def imports() -> list[tuple[str, str, str]]:
    """``(file, importing part, imported part)`` for every import of a vidiff module, at any depth in a file."""
    found = []
    for root, package in ROOTS.items():
        for path in root.rglob("*.py"):
            relative = path.relative_to(root).with_suffix("")
            module = ".".join([package, *relative.parts]).removesuffix(".__init__")
            me = part_of(module)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    other = part_of(name)
                    if other is not None and other != me:
                        found.append((str(path.relative_to(REPO)), me, other))
    return found


def test_every_part_has_a_floor():
    parts = {me for _, me, _ in imports()} | {other for _, _, other in imports()}
    assert parts <= set(FLOORS), parts - set(FLOORS)


def test_no_import_goes_up_a_floor():
    upward = [f"{file}: {me} (floor {FLOORS[me]}) imports {other} (floor {FLOORS[other]})"
              for file, me, other in imports() if FLOORS[other] > FLOORS[me]]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_cycles_within_a_floor():
    edges: dict[str, set[str]] = {}
    for _, me, other in imports():
        if FLOORS[me] == FLOORS[other]:
            edges.setdefault(me, set()).add(other)
    for start in edges:
        stack, seen = list(edges[start]), set()
        while stack:
            node = stack.pop()
            assert node != start, f"import cycle through {start}"
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, ()))
