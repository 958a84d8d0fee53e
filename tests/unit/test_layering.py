"""The import graph of the product code, read from the sources (AST; nothing is imported, no servers).

(i) No circles among ``ferryman`` modules, counting every import: module level, inside functions and under
``TYPE_CHECKING``. (ii) The layering, bottom up: ``config`` <- ``actors`` <- ``protocols`` <- ``bridge`` <-
``ferryman`` (the face: ``ferryman/*.py``, which may import everything); a lower layer never imports a
higher one. The sources are read through ``ferryman/``, whose ``actors``, ``config``, ``protocols`` and
``bridge`` are symlinks to the top-level folders.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "ferryman"

#: Bottom up. A module's layer is its second name part (``ferryman.actors.x`` -> actors); ``ferryman`` and
#: ``ferryman.cli`` and the like are the face.
LAYERS = ("config", "actors", "protocols", "bridge", "ferryman")

Graph = dict[str, set[str]]

#: What looks like an import statement, at any indentation, a parenthesized name list over several lines
#: included. Only these snippets are parsed (parsing whole modules takes most of a second); a file with a
#: snippet that does not parse (a docstring line, a comment with a parenthesis) is parsed whole.
IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+import[ \t]*(?:\([^)]*\)|[^\n]*)|import[ \t]+[^\n]*)", re.M
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module in the ``ferryman`` package (through its symlinked folders)."""
    found: dict[str, Path] = {}
    for directory, subdirs, files in os.walk(root, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in files:
            if name.endswith(".py"):
                path = Path(directory, name)
                parts = ["ferryman", *path.relative_to(root).with_suffix("").parts]
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


@functools.cache
def product_graph() -> Graph:
    return import_graph(modules())


def import_nodes(path: Path) -> list[ast.stmt]:
    """The import statements of one file, wherever they are (functions, ``if TYPE_CHECKING:`` ...)."""
    source = path.read_text()
    try:
        return [ast.parse(match.group().strip()).body[0] for match in IMPORT.finditer(source)]
    except SyntaxError:
        tree = ast.parse(source, str(path))
        return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]


def import_graph(mods: dict[str, Path]) -> Graph:
    """Module -> the ferryman modules it imports anywhere in its source."""
    graph: Graph = {m: set() for m in mods}
    for module, path in mods.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in import_nodes(path):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:  # `from pkg import function` -> pkg
                    name = name.rpartition(".")[0]
                if name and name != module:
                    graph[module].add(name)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
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
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS[:-1] else len(LAYERS) - 1


def upward_imports(graph: Graph) -> list[str]:
    """``a -> b`` for every import of a higher layer by a lower one."""
    return [
        f"{module} ({LAYERS[layer(module)]}) -> {target} ({LAYERS[layer(target)]})"
        for module in sorted(graph)
        for target in sorted(graph[module])
        if layer(target) > layer(module)
    ]


def test_the_graph_covers_every_layer() -> None:
    """The walk goes through the symlinked folders and sees imports (so the checks below are not vacuous)."""
    graph = product_graph()
    assert {LAYERS[layer(m)] for m in graph} == set(LAYERS)
    assert "ferryman.protocols.mqtt.connection" in graph
    assert "ferryman.protocols.mqtt.dataplane" in graph["ferryman.protocols.mqtt.connection"]


def test_no_import_circles() -> None:
    found = cycles(product_graph())
    assert not found, "import circles among ferryman modules:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_lower_layers_never_import_higher_ones() -> None:
    found = upward_imports(product_graph())
    rule = " <- ".join(LAYERS)
    assert not found, f"imports against the layering {rule}:\n" + "\n".join(found)


def test_the_checks_catch_a_circle_and_an_upward_import() -> None:
    graph: Graph = {
        "ferryman.actors.a": {"ferryman.actors.b"},
        "ferryman.actors.b": {"ferryman.actors.a", "ferryman.bridge.c"},
        "ferryman.bridge.c": {"ferryman.config.d"},
        "ferryman.config.d": set(),
        "ferryman.cli": {"ferryman.bridge.c"},
    }
    assert cycles(graph) == [["ferryman.actors.a", "ferryman.actors.b"]]
    assert upward_imports(graph) == ["ferryman.actors.b (actors) -> ferryman.bridge.c (bridge)"]


#: The developer tooling (dev PKI, OCSP responder, HTTP echo): a package of its own beside ``ferryman``.
DEVTOOLS = "ferryman_devtools"
#: The runtime layers: what a running gateway loads. Only the face may reach the tooling, and lazily.
RUNTIME = LAYERS[:-1]


def imported_names(path: Path) -> list[str]:
    """The absolute modules one file imports from, anywhere in it (relative imports stay in their package)."""
    names: list[str] = []
    for node in import_nodes(path):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def devtools_imports(mods: dict[str, Path]) -> list[str]:
    """``module -> name`` for every import of the developer tooling by a runtime module."""
    return [
        f"{module} ({LAYERS[layer(module)]}) -> {name}"
        for module, path in sorted(mods.items())
        if LAYERS[layer(module)] in RUNTIME
        for name in dict.fromkeys(imported_names(path))
        if name == DEVTOOLS or name.startswith(DEVTOOLS + ".")
    ]


def eager_devtools_imports(mods: dict[str, Path]) -> list[str]:
    """Face modules importing the developer tooling at module level (``ferryman run`` would load it)."""
    found: list[str] = []
    for module, path in sorted(mods.items()):
        if LAYERS[layer(module)] in RUNTIME:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{module} -> {n}" for n in names if n == DEVTOOLS or n.startswith(DEVTOOLS + ".")]
    return found


def test_runtime_packages_never_import_the_developer_tooling() -> None:
    found = devtools_imports(modules())
    assert not found, f"runtime modules importing {DEVTOOLS}:\n" + "\n".join(found)


def test_the_face_imports_the_developer_tooling_only_inside_its_commands() -> None:
    mods = modules()
    # Not vacuous: the CLI's commands (certs, responder, http-echo) do import it, inside their functions.
    assert any(n.startswith(DEVTOOLS + ".") for n in imported_names(mods["ferryman.cli"]))
    found = eager_devtools_imports(mods)
    assert not found, f"module-level imports of {DEVTOOLS}:\n" + "\n".join(found)


def test_the_developer_tooling_is_a_package_of_its_own() -> None:
    """Moved out of ``ferryman.protocols``: nothing of it is left in the runtime package."""
    mods = modules()
    tooling = ROOT.parent / DEVTOOLS
    assert {p.stem for p in tooling.glob("*.py")} >= {"__init__", "pki", "pki_extra", "responder", "echo"}
    moved = ("tls.pki", "tls.pki_extra", "tls.responder", "http.echo")
    left = [m for m in mods if m.removeprefix("ferryman.protocols.") in moved]
    assert not left, f"developer tooling still in the runtime package: {left}"


def test_the_devtools_checks_catch_an_import(tmp_path: Path) -> None:
    (tmp_path / "lazy.py").write_text("def f():\n    from ferryman_devtools.pki import write_dev_pki\n")
    (tmp_path / "eager.py").write_text("import ferryman_devtools.responder\n")
    (tmp_path / "clean.py").write_text('"""ferryman_devtools named in a docstring only."""\nimport json\n')
    mods = {
        "ferryman.protocols.tls.lazy": tmp_path / "lazy.py",
        "ferryman.bridge.clean": tmp_path / "clean.py",
        "ferryman.cli": tmp_path / "eager.py",
    }
    assert devtools_imports(mods) == ["ferryman.protocols.tls.lazy (protocols) -> ferryman_devtools.pki"]
    assert eager_devtools_imports(mods) == ["ferryman.cli -> ferryman_devtools.responder"]
