"""The package's layering, enforced on its imports (read with ``ast`` by ``scripts/import-graph``).

* the domain imports nothing but the domain: no wire layer, no media, no SIP, no store, no server, and no
  I/O library (aiohttp, SQLAlchemy, sockets, asyncio...);
* the wire layers (Graph routes, control routes, the SIP gateway, webhooks, the media plane) do not import one
  another, nor the server that wires them (each receives a narrow interface instead);
* no import cycle among wacall's modules, nor among its groups; an import inside a function counts too,
  so it cannot hide one;
* docs/design.md shows the import graph as it is now (``scripts/import-graph`` rewrites it).

Each failure names the offending import as ``file:line: statement``.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_loader = importlib.machinery.SourceFileLoader("import_graph", str(ROOT / "scripts" / "import-graph"))
_spec = importlib.util.spec_from_loader("import_graph", _loader)
graph = sys.modules["import_graph"] = importlib.util.module_from_spec(_spec)
_loader.exec_module(graph)
Import = graph.Import

DOMAIN = "domain"
WIRE = set(graph.WIRE)              # graph, control, sip, webhooks and the media plane (relay)
NEVER_FROM_WIRE = {"server", "cli"}
# what the domain may not use even from outside the package: I/O, transports, the web and SQL stacks
NO_IO = {"aiohttp", "sqlalchemy", "sqlite3", "asyncio", "socket", "ssl", "selectors", "subprocess", "httpx",
         "OpenSSL", "pylibsrtp", "av", "aiortc", "aioice", "uvloop", "typer", "rich"}
DOMAIN_EXCEPTIONS: set[tuple[str, str]] = set()     # (domain module, what it may import anyway): none


# -- the rules, as functions over imports (so they can be shown to fail, below) -------------------------
def domain_violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in imports:
        if graph.group(imp.source) != DOMAIN or (imp.source, imp.target) in DOMAIN_EXCEPTIONS:
            continue
        if imp.target.startswith("wacall"):
            if graph.group(imp.target) != DOMAIN:
                out.append(f"{imp.where()}  (the domain imports {imp.target})")
        elif imp.target in NO_IO:
            out.append(f"{imp.where()}  (the domain does no I/O: no {imp.target})")
    return out


def wire_violations(imports: list[Import]) -> list[str]:
    out = []
    for imp in graph.internal(imports):
        source, target = graph.group(imp.source), graph.group(imp.target)
        if source not in WIRE or source == target:
            continue
        if target in WIRE:
            out.append(f"{imp.where()}  ({source} imports the {target} layer: go through the interface it receives)")
        elif target in NEVER_FROM_WIRE:
            out.append(f"{imp.where()}  ({source} imports {target}: the server wires the layers, not the reverse)")
    return out


def cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Every strongly connected set of nodes with more than one member (or a self-import), each as a path
    through its members that returns to the first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:              # Tarjan; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, {})):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1 or node in edges.get(node, {}):
                found.append(_path(sorted(members), edges))

    for node in sorted(set(edges) | {n for targets in edges.values() for n in targets}):
        if node not in index:
            visit(node)
    return found


def _path(members: list[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """A cycle through the first member, staying inside the strongly connected set (breadth first)."""
    start, inside = members[0], set(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, {})):
                if nxt not in inside:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return members


def cycle_violations(imports: list[Import], level: str) -> list[str]:
    """``level``: "module" (wacall.x.y) or "group" (domain, graph, ...)."""
    name = (lambda m: m) if level == "module" else graph.group
    edges: dict[str, dict[str, Import]] = {}
    for imp in graph.internal(imports):
        a, b = name(imp.source), name(imp.target)
        if "wacall" in (a, b) or (level == "group" and a == b):
            continue
        edges.setdefault(a, {}).setdefault(b, imp)
    out = []
    for cycle in cycles(edges):
        steps = "\n".join(f"    {edges[a][b].where()}" for a, b in zip(cycle, cycle[1:]))
        out.append(f"{' -> '.join(cycle)}\n{steps}")
    return out


def _fail(what: str, violations: list[str]) -> None:
    if violations:
        pytest.fail(f"{what}:\n  " + "\n  ".join(violations), pytrace=False)


# -- the package ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = graph.imports()
    assert len({i.source for i in found}) > 50, "the import reader found (almost) no modules"
    return found


def test_the_domain_imports_no_wire_layer_transport_store_or_server(imports):
    _fail("the domain reaches outside itself", domain_violations(imports))


def test_the_only_domain_exception_is_still_there(imports):
    """The allowed exception must name a real import: once it is gone, delete it here too."""
    present = {(i.source, i.target) for i in imports}
    assert DOMAIN_EXCEPTIONS <= present, f"stale exceptions: {DOMAIN_EXCEPTIONS - present}"


def test_wire_layers_import_neither_each_other_nor_the_server(imports):
    _fail("a wire layer reaches another layer", wire_violations(imports))


def test_the_business_library_stands_alone(imports):
    """``wacall.business`` is what a business runs against Meta: it may use nothing of the emulator but the
    sans-I/O media protocol modules the bridge may use too (DTLS-SRTP, its certificate, SRTP) for its WebRTC leg."""
    allowed = ("wacall.business", "wacall.media.dtls", "wacall.media.certificate", "wacall.media.srtp")
    _fail("wacall.business imports the emulator", [
        f"{imp.where()}  (wacall.business imports {imp.target})" for imp in imports
        if imp.source.startswith("wacall.business") and imp.target.startswith("wacall")
        and not any(imp.target == a or imp.target.startswith(a + ".") for a in allowed)])


def test_the_bridge_uses_only_the_business_library_and_sans_io_sip(imports):
    """``wacall.bridge`` runs against Meta: of wacall it may use the business library and the sans-I/O SIP
    message, URI and digest modules, nothing of the emulator; the builtin media mode also the media's sans-I/O
    protocol modules (DTLS-SRTP over memory BIOs, its certificate, SRTP contexts on pylibsrtp, G.711 tables and
    resamplers)."""
    allowed = ("wacall.bridge", "wacall.business", "wacall.sip.message", "wacall.sip.uri", "wacall.sip.digest",
               "wacall.media.dtls", "wacall.media.certificate", "wacall.media.srtp", "wacall.media.g711")
    _fail("wacall.bridge imports the emulator", [
        f"{imp.where()}  (wacall.bridge imports {imp.target})" for imp in imports
        if imp.source.startswith("wacall.bridge") and imp.target.startswith("wacall")
        and not imp.target.startswith(allowed)])


def test_no_import_cycle_among_modules(imports):
    _fail("import cycles among wacall's modules", cycle_violations(imports, "module"))


def test_no_import_cycle_among_groups(imports):
    _fail("import cycles among wacall's groups", cycle_violations(imports, "group"))


def test_the_design_doc_shows_the_current_import_graph(imports):
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    shown = graph.section(text)
    assert shown is not None, "docs/design.md has no generated import graph section"
    current = graph.render(imports)
    if shown != current:
        diff = difflib.unified_diff(shown.splitlines(), current.splitlines(), "docs/design.md", "the source", lineterm="")
        pytest.fail("docs/design.md's import graph is stale: run scripts/import-graph\n" + "\n".join(diff),
                    pytrace=False)


# -- the rules fail, and say where ------------------------------------------------------------------------
def _imp(source: str, target: str, line: int = 7, nested: bool = False) -> Import:
    path = "src/" + source.replace(".", "/") + ".py"
    return Import(source, target, path, line, nested, f"import {target}")


def test_the_rules_name_the_offending_import():
    assert domain_violations([_imp("wacall.domain.calls", "wacall.server")]) == [
        "src/wacall/domain/calls.py:7: import wacall.server  (the domain imports wacall.server)"]
    assert domain_violations([_imp("wacall.domain.state", "sqlalchemy", 3)]) == [
        "src/wacall/domain/state.py:3: import sqlalchemy  (the domain does no I/O: no sqlalchemy)"]
    assert domain_violations([_imp("wacall.domain.calls", "wacall.domain.sdp"),
                              _imp("wacall.domain.calls", "wacall.domain.model"),
                              _imp("wacall.domain.calls", "zoneinfo")]) == []
    assert domain_violations([_imp("wacall.domain.calls", "wacall.media.sdp")]) == [
        "src/wacall/domain/calls.py:7: import wacall.media.sdp  (the domain imports wacall.media.sdp)"]
    assert [v.split("  ")[0] for v in wire_violations([
        _imp("wacall.graph.routes", "wacall.media.ports", 1), _imp("wacall.sip.gateway", "wacall.server", 2, True),
        _imp("wacall.control.routes", "wacall.domain.model", 3), _imp("wacall.media.relay", "wacall.media.rtp", 4),
        _imp("wacall.server", "wacall.graph.routes", 5)])] == [
        "src/wacall/graph/routes.py:1: import wacall.media.ports",
        "src/wacall/sip/gateway.py:2: import wacall.server"]
    loop = [_imp("wacall.server", "wacall.graph.routes", 1), _imp("wacall.graph.routes", "wacall.graph.errors", 2),
            _imp("wacall.graph.errors", "wacall.server", 3, True), _imp("wacall.cli", "wacall.server", 4)]
    [found] = cycle_violations(loop, "module")
    assert found.splitlines() == [
        "wacall.graph.errors -> wacall.server -> wacall.graph.routes -> wacall.graph.errors",
        "    src/wacall/graph/errors.py:3: import wacall.server",
        "    src/wacall/server.py:1: import wacall.graph.routes",
        "    src/wacall/graph/routes.py:2: import wacall.graph.errors"]
    [found] = cycle_violations(loop, "group")
    assert found.splitlines()[0] == "graph -> server -> graph"
    assert cycle_violations([_imp("wacall.a", "wacall.a")], "module")[0].startswith("wacall.a -> wacall.a")
    assert cycle_violations(loop[:2] + loop[3:], "module") == []


def test_the_reader_resolves_relative_imports_and_notices_nested_ones(tmp_path):
    package = tmp_path / "src" / "wacall"
    (package / "graph").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "codec.py").write_text("")
    (package / "server.py").write_text("")
    (package / "graph" / "__init__.py").write_text("")
    (package / "graph" / "errors.py").write_text("")
    (package / "graph" / "routes.py").write_text(
        "from .. import codec\nfrom .errors import x, y\nimport aiohttp.web\n"
        "def f():\n    from ..server import Wacall\n")
    found = {(i.source, i.target, i.line, i.nested) for i in graph.imports(package)}
    assert found == {("wacall.graph.routes", "wacall.codec", 1, False),
                     ("wacall.graph.routes", "wacall.graph.errors", 2, False),
                     ("wacall.graph.routes", "aiohttp", 3, False),
                     ("wacall.graph.routes", "wacall.server", 5, True)}
    assert "m_graph -.-> m_server" in graph.render(graph.imports(package))
