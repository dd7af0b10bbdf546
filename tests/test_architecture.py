"""The house as docs/architecture.md draws it, checked against every import in the code.

The layers of the server and the agent modules the server may use are read from that page, so
the page and the code cannot drift apart: a new package or a new use of agent code is added
there first, with its reason.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
PRODUCT = ("agent", "fleet_server", "protos")
MAX_LINES = 700
# Code of ours that must not reach into private names either.
EVERYTHING = (*PRODUCT, "bench", "scripts", "tests")
# The admin CLI is a client of the server: these are all of the server it may import.
CLIENT_ALLOWED = {"errors", "signing", "optimize", "routing", "admin_cli", "__init__"}


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file, relative to the repo
    module: str  # the imported module
    names: tuple[str, ...]  # names taken from it (empty for `import x`)
    line: int


def _is_generated(path: Path) -> bool:
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py"))


def _files(*tops: str) -> Iterator[Path]:
    for top in tops:
        for path in sorted((REPO / top).rglob("*.py")):
            if not _is_generated(path) and "mlserver" not in path.parts:
                yield path


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, source: str | None = None) -> Iterator[Import]:
    """The imports of ``path`` (or of ``source`` as if it were that file)."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    here = _module_of(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path.relative_to(REPO), alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names = tuple(alias.name for alias in node.names)
            yield Import(path.relative_to(REPO), module, names, node.lineno)
            for name in names:  # "from package import module" imports package.module
                if _is_module(f"{module}.{name}"):
                    yield Import(path.relative_to(REPO), f"{module}.{name}", (), node.lineno)
        elif (
            isinstance(node, ast.Call)
            and _called(node) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield Import(path.relative_to(REPO), node.args[0].value, (), node.lineno)


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository."""
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _called(call: ast.Call) -> str:
    """The name a call calls: "f" in f(...) and in m.f(...)."""
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def _doc_table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in docs/architecture.md, as cells."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header row


def _layers() -> dict[str, int]:
    """Server unit (package folder or top-level module, as "api" or "app.py") -> layer."""
    layers = {"errors.py": -1, "__init__.py": -1}
    for cells in _doc_table("## The server (`fleet_server/`)"):
        for unit in re.findall(r"`([a-z_]+(?:/|\.py))`", cells[1]):
            layers[unit.rstrip("/")] = int(cells[0])
    return layers


def _unit(module: str) -> str:
    """The server unit a fleet_server module belongs to."""
    top = module.split(".")[1] if module.count(".") else "__init__"
    return top if (REPO / "fleet_server" / top).is_dir() else f"{top}.py"


def _allowed_agent_modules() -> set[str]:
    allowed: set[str] = set()
    for cells in _doc_table("## The server's use of agent code"):
        allowed.update(re.findall(r"`(agent[a-z_.]*)`", cells[0]))
    return allowed


def test_the_page_names_every_server_package_and_module() -> None:
    layers = _layers()
    units = {
        p.name
        for p in (REPO / "fleet_server").iterdir()
        if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")
    }
    missing = sorted(u for u in units if u not in layers)
    assert not missing, f"add these to the layer table of docs/architecture.md: {missing}"


def test_server_packages_import_only_lower_layers() -> None:
    layers = _layers()
    wrong = []
    for path in _files("fleet_server"):
        here = _unit(_module_of(path))
        for imp in _imports(path):
            if not imp.module.startswith("fleet_server.") or _unit(imp.module) == here:
                continue
            there = _unit(imp.module)
            if layers[there] >= layers[here]:
                wrong.append(
                    f"{imp.path}:{imp.line}: {here} (layer {layers[here]}) imports "
                    f"{imp.module} ({there}, layer {layers[there]})"
                )
    assert not wrong, "\n".join(wrong)


def test_storage_imports_no_concern_package() -> None:
    wrong = [
        f"{imp.path}:{imp.line}: {imp.module}"
        for path in _files("fleet_server/storage")
        for imp in _imports(path)
        if imp.module.startswith("fleet_server.")
        and not imp.module.startswith(("fleet_server.storage", "fleet_server.errors"))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_admin_cli_is_a_client_of_the_server() -> None:
    wrong = [
        f"{imp.path}:{imp.line}: {imp.module}"
        for path in _files("fleet_server/admin_cli")
        for imp in _imports(path)
        if imp.module.startswith("fleet_server.")
        and imp.module.split(".")[1].removesuffix(".py") not in CLIENT_ALLOWED
    ]
    assert not wrong, "\n".join(wrong)


def test_the_agent_never_imports_the_server_and_protos_import_only_protos() -> None:
    wrong = []
    for path in _files("agent", "protos"):
        for imp in _imports(path):
            top = imp.module.split(".")[0]
            if top == "fleet_server" or (
                path.parts[len(REPO.parts)] == "protos" and top == "agent"
            ):
                wrong.append(f"{imp.path}:{imp.line}: {imp.module}")
    assert not wrong, "\n".join(wrong)


def test_the_server_uses_only_the_agent_modules_the_page_lists() -> None:
    allowed = _allowed_agent_modules()
    assert "agent.inference.modelfile" in allowed  # the table was found
    wrong = [
        f"{imp.path}:{imp.line}: {imp.module}"
        for path in _files("fleet_server")
        for imp in _imports(path)
        if imp.module.split(".")[0] == "agent" and imp.module not in allowed
    ]
    assert not wrong, "add them to docs/architecture.md with the reason, or not:\n" + "\n".join(
        wrong
    )


def test_the_server_never_raises_the_agents_errors() -> None:
    wrong = []
    for path in _files("fleet_server"):
        agent_errors = {
            name for imp in _imports(path) if imp.module == "agent.errors" for name in imp.names
        }
        if not agent_errors:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                called = node.exc.func
                if isinstance(called, ast.Name) and called.id in agent_errors:
                    wrong.append(f"{path.relative_to(REPO)}:{node.lineno}: raise {called.id}")
    assert not wrong, "\n".join(wrong)


def _private(component: str) -> bool:
    return component.startswith("_") and not component.startswith("__")


def test_nothing_imports_another_modules_private_names() -> None:
    wrong = []
    for path in _files(*EVERYTHING):
        here = _module_of(path)
        for imp in _imports(path):
            if imp.module == "__future__" or imp.module.split(".")[0] not in EVERYTHING:
                continue
            private = [name for name in imp.names if _private(name)]
            if private:
                wrong.append(f"{imp.path}:{imp.line}: {', '.join(private)} from {imp.module}")
            parts = imp.module.split(".")
            for i, part in enumerate(parts):
                # A private module is for its own package (and the packages inside it).
                owner = ".".join(parts[:i])
                if _private(part) and not (here == owner or here.startswith(f"{owner}.")):
                    wrong.append(f"{imp.path}:{imp.line}: private module {imp.module}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("top", PRODUCT)
def test_no_product_module_is_over_700_lines_without_saying_why(top: str) -> None:
    wrong = []
    for path in _files(top):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_LINES and "Over 700 lines:" not in docstring:
            wrong.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not wrong, "split these, or say why not in the docstring:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "source",
    [
        "from fleet_server import app\n",
        "from .. import app\n",
        "from fleet_server import app as composition_root\n",
        "import importlib\n\nimportlib.import_module('fleet_server.app')\n",
        "__import__('fleet_server.app')\n",
    ],
)
def test_every_form_of_import_is_seen(source: str) -> None:
    # The layer, client and storage checks look at the imported module's name: "from
    # fleet_server import app" names the module "fleet_server" (layer -1 or no check at all),
    # so registry/ (layer 1) could import the composition root (layer 8) unseen; a dynamic
    # import is no import statement at all.
    probe = REPO / "fleet_server" / "registry" / "probe.py"
    modules = {imp.module for imp in _imports(probe, source)}
    assert "fleet_server.app" in modules, modules
