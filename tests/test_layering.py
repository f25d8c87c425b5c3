"""The import layering of the package: tools -> engine/ablation -> evaluation/modeling/data ->
losses/boxes/config.

A module may import modules of its own layer or of a lower one, never of a higher one, and the
imports form no circle. Both checks read every import, at the top of a module and inside its
functions alike: an import moved into a function still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import detector

PACKAGE = Path(detector.__file__).parent

LAYERS = {  # module prefix -> layer (higher imports lower)
    "detector.errors": 0,
    "detector.config": 0,
    "detector.boxes": 0,
    "detector.box_coder": 0,
    "detector.losses": 0,
    "detector.data": 1,
    "detector.modeling": 1,
    "detector.evaluation": 1,
    "detector.engine": 2,
    "detector.ablation": 2,
}


def layer_of(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} has no layer: add it to LAYERS in {__file__}"
    return LAYERS[max(matches, key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The detector modules ``path`` imports anywhere in it (relative imports resolved; ``from
    package import module`` counts the package and the module)."""
    tree = ast.parse(path.read_text())
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {
                f"{base}.{alias.name}"
                for alias in node.names
                if (PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/"))
                .with_suffix(".py")
                .is_file()
            }
    return {m for m in found if m == "detector" or m.startswith("detector.")} - {"detector"}


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. An import of a package reaches its ``__init__``; a
    package's own modules importing it are left out (the ``__init__`` runs first and is already
    importing them)."""
    mods = modules()
    return {
        name: {
            m for m in imports_of(path) if m in mods and m != name and not name.startswith(m + ".")
        }
        for name, path in mods.items()
    }


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_no_import_from_a_lower_layer_to_a_higher_one():
    violations = []
    for name, imported in import_graph().items():
        if name == "detector":
            continue
        for other in sorted(imported):
            if layer_of(other) > layer_of(name):
                violations.append(
                    f"{name} (layer {layer_of(name)}) imports {other} (layer {layer_of(other)})"
                )
    assert not violations, "\n".join(violations)


def test_imports_form_no_circle():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_checker_sees_a_violation_and_a_circle(tmp_path):
    """Both checks can fail: a function-level import of a higher layer is found, and so is a
    circle."""
    fake = tmp_path / "detector" / "boxes.py"
    (tmp_path / "detector" / "engine").mkdir(parents=True)
    (tmp_path / "detector" / "engine" / "trainer.py").write_text("")
    fake.write_text(
        "def f():\n    from detector.engine import trainer\n    from .modeling import x\n"
    )
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "detector"
    try:
        found = imports_of(fake)
    finally:
        PACKAGE = saved
    assert found == {"detector.engine", "detector.engine.trainer", "detector.modeling"}
    assert layer_of("detector.engine.trainer") > layer_of("detector.boxes")
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None
