"""The package layout: imports point down the layers (no cycle), one module per name, a core free of the
training options."""

from __future__ import annotations

import ast
from pathlib import Path

import detr

PACKAGE = Path(detr.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


# The model's documented doors to the layers above it (saving, loading, the inference copy), which import them
# lazily inside the method: ``model.save_pretrained(...)`` reads as the user expects, and the model module
# itself does not depend on them.
LAZY_DOORS = {
    "detr.models.detr": {
        "DETR.save_pretrained",
        "DETR.from_pretrained",
        "DETR.export_hf",
        "DETR.optimize_for_inference",
    },
    "detr.models.segmentation": {"DETRSegmentation.save_pretrained", "DETRSegmentation.export_hf"},
}

# The layers, lowest first: a module imports from its own layer or the ones below (README, "Layout").
LAYERS = (
    ("base", ("detr", "detr._lazy", "detr.fileio", "detr.device", "detr.distributed", "detr.terminal")),
    ("processing", ("detr.processing",)),
    ("data", ("detr.data",)),
    ("weight files", ("detr.hub.download", "detr.hub.pretrained", "detr.hub.checkpoints")),
    ("model parts", (
        "detr.models.layers", "detr.models.position_encoding", "detr.models.transformer", "detr.models.backbone",
        "detr.models.architectures", "detr.models.registry",
    )),
    ("losses", ("detr.losses",)),
    ("options", ("detr.options",)),
    ("models", ("detr.models",)),
    ("saving", ("detr.hub",)),
    ("engine", ("detr.engine",)),
    ("deploy", ("detr.deploy",)),
    ("loader", ("detr.loader",)),
    ("applications", ("detr.explain", "detr.demo", "detr.serve", "detr.cli", "detr.__main__")),
)  # fmt: skip


def layer_of(name: str) -> int:
    """The index in :data:`LAYERS` of the most specific entry naming ``name`` or a package above it."""
    best, depth = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{name} is in no layer: add it to LAYERS (and the README's Layout table)"
    return best


def imported_modules(name: str) -> set[str]:
    """The package's modules that ``name`` imports, at module level or inside functions (``if TYPE_CHECKING:``
    blocks run nothing and are left out, and so are the :data:`LAZY_DOORS`). ``from pkg import x`` counts as
    importing ``pkg.x`` when that is a module, else ``pkg`` itself."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    doors = LAZY_DOORS.get(name, set())

    def visit(node: ast.AST, scope: str = "") -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                for rest in child.orelse:  # the else branch does run
                    visit(rest, scope)
                continue
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = f"{scope}.{child.name}" if scope else child.name
                if inner not in doors:
                    visit(child, inner)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
            visit(child, scope)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = {name: imported_modules(name) for name in MODULES}
    assert graph["detr.models.detr"] >= {"detr.losses.criterion", "detr.options.base"}  # the walker sees imports
    assert "detr.models.detr" in graph["detr.models.factories"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    upward = sorted(
        f"{name} ({LAYERS[layer_of(name)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
        for name in MODULES
        for target in imported_modules(name)
        if layer_of(target) > layer_of(name)
    )
    assert upward == []


def test_the_direction_check_sees_upward_imports():
    assert layer_of("detr.models.detr") > layer_of("detr.models.layers") > layer_of("detr.hub.checkpoints")
    assert (
        layer_of("detr.hub.serialization") > layer_of("detr.models.detr") and layer_of("detr.demo") == len(LAYERS) - 1
    )
    assert "detr.hub.serialization" not in imported_modules("detr.models.detr")  # only inside the doors
    assert "detr.models.detr" in imported_modules("detr.models.segmentation")


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_model_does_not_import_what_builds_or_copies_it():
    imports = imported_modules("detr.models.detr")
    assert not imports & {"detr.models.factories", "detr.models.registry", "detr.deploy.export"}
    for name in ("detr.hub.serialization", "detr.deploy.inference", "detr.options.base"):
        assert "detr.models.detr" not in imported_modules(name), name


def test_no_two_modules_share_a_name():
    stems: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            stems.setdefault(path.stem, []).append(name)
    assert {stem: names for stem, names in stems.items() if len(names) > 1} == {}


def test_the_core_model_has_no_trace_of_the_training_options():
    """models/detr.py is the paper's model: its code names none of the options (its docstrings may)."""
    tree = ast.parse(MODULES["detr.models.detr"].read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    words = ("denois", "group", "anchor", "dense", "refine", "two_stage", "proposal")
    assert sorted(n for n in names if any(w in n.lower() for w in words)) == []
