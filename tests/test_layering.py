"""The import layering of the package: tools -> engine -> evaluation/modeling/data -> losses/boxes/config.

A module may import modules of its own layer or of a lower one, never of a higher one (function-level imports
count too), and the modules' top-level imports form no cycle.
"""
import ast
from pathlib import Path

import detector

PACKAGE = Path(detector.__file__).parent

LAYERS = {  # module prefix -> layer (higher imports lower)
    "detector.errors": 0, "detector.config": 0, "detector.backbone_table": 0, "detector.boxes": 0,
    "detector.box_coder": 0, "detector.losses": 0,
    "detector.data": 1, "detector.modeling": 1, "detector.evaluation": 1,
    "detector.engine": 2, "detector.benchmark": 2, "detector.ablation": 2,
}


def layer_of(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} has no layer: add it to LAYERS in {__file__}"
    return LAYERS[max(matches, key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, top_level_only: bool) -> set[str]:
    """The detector modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
    return {m for m in found if m == "detector" or m.startswith("detector.")} - {"detector"}


def modules():
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_import_from_a_lower_layer_to_a_higher_one():
    violations = []
    for name, path in modules().items():
        if name == "detector":
            continue
        for imported in imports_of(path, top_level_only=False):
            if layer_of(imported) > layer_of(name):
                violations.append(f"{name} (layer {layer_of(name)}) imports {imported} (layer {layer_of(imported)})")
    assert not violations, "\n".join(violations)


def test_top_level_imports_have_no_cycle():
    mods = modules()
    graph = {}
    for name, path in mods.items():
        # an import of a package resolves to its __init__; of a module to itself
        graph[name] = {m for m in imports_of(path, top_level_only=True) if m in mods and m != name}

    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1 and not node.startswith(nxt + "."):  # a package's own __init__: fine
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def test_the_checker_sees_a_violation(tmp_path):
    """The layering check can fail: a low module importing a high one is reported."""
    fake = tmp_path / "detector" / "boxes.py"
    fake.parent.mkdir()
    fake.write_text("from detector.engine.trainer import train\nfrom .modeling import x\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "detector"
    try:
        found = imports_of(fake, top_level_only=False)
    finally:
        PACKAGE = saved
    assert found == {"detector.engine.trainer", "detector.modeling"}
    assert layer_of("detector.engine.trainer") > layer_of("detector.boxes")
