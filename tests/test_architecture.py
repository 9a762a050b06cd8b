"""The layout holds: imports go one way (commands -> engines -> foundations -> blocks), no module imports another
that imports it back (lazy imports inside functions included), and no module passes ~400 lines."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ablate", "blocks")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> set[str]:
    """The project modules `name` imports anywhere in its file: `from . import x` is module x, not the package."""
    base = name if is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = base
            for _ in range(node.level - 1):
                parent = parent.rpartition(".")[0]
            source = ".".join(p for p in (parent if node.level else "", node.module or "") if p)
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import torch.nn` or a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    """blocks 0, foundations (and the version in ablate/__init__) 1, engines 2, commands 3, __main__ 4."""
    if name.startswith("blocks"):
        return 0
    for prefix, rank in (("ablate.foundations", 1), ("ablate.engines", 2), ("ablate.commands", 3),
                         ("ablate.__main__", 4)):
        if name.startswith(prefix):
            return rank
    return 1


def test_the_graph_sees_every_layer():
    assert {layer(m) for m in MODULES} == {0, 1, 2, 3, 4}
    assert "ablate.engines.training.runs" in GRAPH["ablate.commands.run"]  # a real edge is found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down(name):
    up = sorted(t for t in GRAPH[name] if layer(t) > layer(name))
    assert not up, f"{name} (layer {layer(name)}) imports from a higher layer: {up}"


def test_no_import_cycle():
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it along its responsibilities"
