"""The house rules of ARCHITECTURE.md, checked on the code itself (no app, no servers).

- No import cycles inside portal/, counting imports inside functions.
- No module over 450 lines.
- The layers: portal/mail/ imports neither Flask, nor the database, nor anything of portal
  outside mail/; models import no services; no one outside mail/ touches an IMAP session's
  client or a private name of mail/.
- A mailbox's state, reason and detail are written in portal/accounts/state.py only.
- XOAUTH2 is written once (portal/mail/xoauth2.py).
- An import inside a function says why, in a comment on its line or the line above.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PORTAL = ROOT / "portal"
MAX_LINES = 450


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PORTAL.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> list[tuple[str, ast.AST, bool]]:
    """(imported portal module, the import node, inside a function) for every import."""
    tree = ast.parse(path.read_text())
    inner = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            targets = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("portal") and target != name:
                found.append((target, node, id(node) in inner))
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_there_are_no_import_cycles_in_portal_counting_imports_inside_functions():
    edges = {name: {target for target, _node, _inner in found} for name, found in GRAPH.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                cycles.append(sorted(component))

    for name in edges:
        if name not in index:
            visit(name)
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_450_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


def test_an_import_inside_a_function_says_why():
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here = node.lineno - 1
                    first = here  # a block of imports shares the comment above it
                    while first > 0 and lines[first - 1].strip().startswith(("from ", "import ")):
                        first -= 1
                    if "#" not in lines[here] and not lines[first - 1].strip().startswith("#"):
                        unexplained.append(f"{name}:{node.lineno}: {lines[here].strip()}")
    assert unexplained == []


def test_the_mail_core_is_pure():
    """portal/mail/ talks the protocols and decides; no Flask, no database, no Redis, no
    portal module outside mail/ (the rules are tested fast and alone)."""
    forbidden = re.compile(r"^\s*(from|import) (flask|sqlalchemy|redis|rq)\b", re.M)
    for name, path in MODULES.items():
        if not name.startswith("portal.mail"):
            continue
        assert not forbidden.search(path.read_text()), name
        assert {t for t, _n, _i in GRAPH[name] if not t.startswith("portal.mail")} == set(), name


def test_models_import_no_services():
    allowed = ("portal.models", "portal.extensions", "portal.timeutil")
    for name in MODULES:
        if name.startswith("portal.models"):
            assert {t for t, _n, _i in GRAPH[name] if not t.startswith(allowed)} == set(), name


def test_nothing_outside_mail_touches_an_imap_client_or_a_private_name_of_mail():
    for name, path in MODULES.items():
        if name.startswith("portal.mail"):
            continue
        text = path.read_text()
        assert not re.search(r"session\.client\b|\._imap\b", text), name
        for target, node, _inner in GRAPH[name]:
            if target.startswith("portal.mail") and isinstance(node, ast.ImportFrom):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert private == [], (name, target, private)


def test_a_mailboxs_state_reason_and_detail_are_written_in_the_state_module_only():
    """Assignments to .state/.reason/.detail of a mailbox (by its usual names), and any
    direct write of those columns through an UPDATE, outside portal/accounts/state.py."""
    writes = []
    mailbox_names = re.compile(r"^(mailbox|box|m|existing|target)$")
    for name, path in MODULES.items():
        if name == "portal.accounts.state":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple)
                                                                   else [target])]
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in ("state", "reason", "detail") \
                        and isinstance(target.value, ast.Name) and mailbox_names.match(target.value.id):
                    writes.append(f"{name}:{node.lineno}")
        text = path.read_text()
        if re.search(r"update\(Mailbox\)[^\n]*\.values\([^)]*\b(state|reason|detail)\s*=", text):
            writes.append(f"{name}: UPDATE mailboxes")
    assert writes == []


def test_xoauth2_is_written_once():
    """The XOAUTH2 initial response ("user=...\\x01auth=Bearer ...") is built in one place."""
    places = [name for name, path in MODULES.items() if "auth=Bearer" in path.read_text()]
    assert places == ["portal.mail.xoauth2"]


def test_every_blueprint_is_registered_by_name_in_the_web_package():
    text = (PORTAL / "web" / "__init__.py").read_text()
    for views in sorted((PORTAL / "web").glob("*/views.py")):
        area = views.parent.name
        assert f"from portal.web.{area} import views as" in text, area
