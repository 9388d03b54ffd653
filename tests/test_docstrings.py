"""Every public function, method and class of ``features``, ``strategies``, ``recsys.core``,
``recsys.serving``, ``recsys.models``, ``recsys.store``, ``recsys.ops``, ``recsys.web``,
``recsys.offline``, ``recsys.cli`` (their subpackages included), and the modules
``recsys.errors``, ``recsys.app``, ``recsys.config``, ``recsys.paths`` and ``recsys.client``
has a numpy-style docstring.

Read with ``ast`` (nothing is imported, so optional dependencies do not matter):

* a public class (name not starting with ``_``) has a docstring;
* a public function or method has a docstring; if it takes parameters (``self`` / ``cls``
  aside) the docstring has a numpydoc ``Parameters`` section naming each of them, or, for a
  method that only implements a documented contract, points to it (``See ``Strategy.fit``.``);
* dunders (``__init__``: documented on the class) and properties are skipped;
* Flask views (``@bp.get(...)``, ``@ui.post(...)``, ``@bp.route(...)``...) and click commands
  and groups (``@click.command()``, ``@group.command(...)``...) need a docstring but no
  ``Parameters`` section: a view's docstring is its OpenAPI description and a command's is its
  ``--help`` text; neither is called with Python arguments.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "features",
    "strategies",
    "recsys/core",
    "recsys/serving",
    "recsys/models",
    "recsys/store",
    "recsys/ops",
    "recsys/web",
    "recsys/offline",
    "recsys/cli",
)
EXTRA_MODULES = (
    "recsys/errors.py",
    "recsys/app.py",
    "recsys/config.py",
    "recsys/paths.py",
    "recsys/client.py",
)
# ``<blueprint>.<verb>(...)``: a Flask view; ``<group>.command(...)`` / ``.group(...)``: click.
ROUTE_VERBS = frozenset({"get", "post", "put", "patch", "delete", "route"})
CLICK_VERBS = frozenset({"command", "group"})

# "See ``Strategy.fit``." (any dotted name): the method only implements that contract.
SEE_ALSO = re.compile(r"\bSee ``[A-Za-z_][\w.]*``")
SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}$", re.MULTILINE)


def _modules() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return files + [ROOT / m for m in EXTRA_MODULES]


def _is_property(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in node.decorator_list:
        text = ast.unparse(deco)
        if text.endswith(("property", ".setter", ".deleter")):
            return True
    return False


def _is_view_or_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A Flask view or a click command / group: its parameters come from the framework."""
    for deco in node.decorator_list:
        func = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(func, ast.Attribute):
            if func.attr in CLICK_VERBS:
                return True
            if func.attr in ROUTE_VERBS and isinstance(deco, ast.Call):
                return True
    return False


def _is_staticmethod(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(ast.unparse(d) == "staticmethod" for d in node.decorator_list)


def _public_defs(
    body: list[ast.stmt], prefix: str = "", in_class: bool = False
) -> Iterator[tuple[str, ast.AST, bool]]:
    """(qualified name, node, is a method) of every public def and class, classes recursed."""
    for node in body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if node.name.startswith("_"):
            continue  # private, and dunders (``__init__`` is documented on its class)
        qualname = f"{prefix}{node.name}"
        if isinstance(node, ast.ClassDef):
            yield qualname, node, False
            yield from _public_defs(node.body, f"{qualname}.", in_class=True)
        elif not _is_property(node):
            yield qualname, node, in_class


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    a = node.args
    names = [x.arg for x in (*a.posonlyargs, *a.args)]
    if is_method and not _is_staticmethod(node) and names:
        names = names[1:]  # self / cls
    names += [x.arg for x in a.kwonlyargs]
    names += [f"*{a.vararg.arg}"] if a.vararg else []
    names += [f"**{a.kwarg.arg}"] if a.kwarg else []
    return names


def _section(doc: str, title: str) -> str | None:
    """The text of numpydoc section ``title`` (up to the next section), or None."""
    heads = list(SECTION.finditer(doc))
    for i, m in enumerate(heads):
        if m.group(1) == title:
            end = heads[i + 1].start() if i + 1 < len(heads) else len(doc)
            return doc[m.end() : end]
    return None


def _documented_names(section: str) -> set[str]:
    """Parameter names of a Parameters section: ``name : type`` or ``a, b`` entry lines
    (the unindented lines; descriptions are indented)."""
    names: set[str] = set()
    for line in section.splitlines():
        if not line.strip() or line.startswith((" ", "\t")):
            continue
        for part in line.split(" : ")[0].split(","):
            names.add(part.strip())
    return names


def _problems(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(root)
    out = []
    for qualname, node, is_method in _public_defs(tree.body):
        where = f"{rel}:{node.lineno} {qualname}"
        doc = ast.get_docstring(node)
        if not doc:
            out.append(f"{where}: no docstring")
            continue
        if isinstance(node, ast.ClassDef):
            continue
        params = _parameters(node, is_method)
        if not params or _is_view_or_command(node):
            continue
        section = _section(doc, "Parameters")
        if section is None:
            if is_method and SEE_ALSO.search(doc):
                continue  # implements a contract documented once, on the base class
            out.append(f"{where}: no Parameters section for {params}")
            continue
        documented = _documented_names(section)
        missing = [p for p in params if p not in documented and p.lstrip("*") not in documented]
        if missing:
            out.append(f"{where}: Parameters section does not name {missing}")
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_public_api_has_numpy_docstrings(path: Path) -> None:
    assert path.is_file(), f"{path} is gone: update PACKAGES / EXTRA_MODULES"
    problems = _problems(path)
    assert not problems, "\n".join(problems)


def test_checker_catches_a_missing_section(tmp_path: Path) -> None:
    """The checker itself: an undocumented parameter and a missing docstring are reported,
    a property, a dunder, a Flask view and a click command are not."""
    src = tmp_path / "mod.py"
    src.write_text(
        "class A:\n"
        '    """Doc."""\n'
        "    def __init__(self, x): pass\n"
        "    @property\n"
        "    def p(self): return 1\n"
        "    def m(self, y):\n"
        '        """No sections."""\n'
        "    def n(self, z):\n"
        '        """See ``Base.n``."""\n'
        "def f(a, b):\n"
        '    """F.\n\n    Parameters\n    ----------\n    a : int\n    """\n'
        "def g():\n"
        "    pass\n"
        "@bp.get('/x/<int:x>')\n"
        "def view(x):\n"
        '    """A view."""\n'
        "@click.command()\n"
        "@click.option('--n')\n"
        "def cmd(n):\n"
        '    """A command."""\n'
        "@group.command('c2')\n"
        "def cmd2(n):\n"
        "    pass\n"
    )
    problems = _problems(src, root=tmp_path)
    assert len(problems) == 4, problems
    assert "A.m: no Parameters section" in problems[0]
    assert "f: Parameters section does not name ['b']" in problems[1]
    assert "g: no docstring" in problems[2]
    assert "cmd2: no docstring" in problems[3]
