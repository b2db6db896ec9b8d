"""The project documents itself: README.md and docs/ARCHITECTURE.md say what the code does.

Routes are read from the application's own router, so a route added without a line in
both route tables fails here, and so does a documented route that no longer exists. No
server is started: these tests only read files and resolve URLs.
"""

from __future__ import annotations

import argparse
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import AbstractRoute

from broadcast.app import create_app
from broadcast.cli import _parser
from broadcast.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# What ships with the project and may not point outside it.
DOCUMENTED_TREES = (
    *("README.md", "docs", "broadcast", "tests", "bench", "client", "deploy"),
    *("install.sh", "flashphoner.xml.example", "setup.cfg", "pyproject.toml"),
)
SKIPPED_SUFFIXES = (".so", ".pyc")
# Written in pieces, so that this file does not name what it looks for.
OUTSIDE_REFERENCES = ("../" + "shared", "DESIGN" + ".md", "DESIGN" + " §")
METHODS = ("GET", "POST", "PATCH", "DELETE", "OPTIONS", "PUT")
# Web client element ids that the end-to-end tests and embedders rely on, by page.
ELEMENT_IDS = {
    "index.html": (
        "start",
        "stop",
        "share-link",
        "copy-link",
        "status",
        "viewer-count",
    ),
    "watch.html": ("player", "fullscreen", "status"),
}
ELEMENT_TAGS = {("watch.html", "player"): "video"}
# `/ws` messages: what a page sends, and what it receives.
WS_SENT = ("subscribe", "unsubscribe", "quality", "token")
WS_RECEIVED = ("state", "viewers", "error")


def _shipped_files() -> list[Path]:
    files: list[Path] = []
    for name in DOCUMENTED_TREES:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [
                p
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and "__pycache__" not in p.parts
                and not p.name.endswith(SKIPPED_SUFFIXES)
            ]
    return files


def test_nothing_in_the_project_points_at_notes_outside_it() -> None:
    """A reader has the repository, not the team's notes: every pointer stays inside."""
    files = _shipped_files()
    assert ARCHITECTURE in files, "docs/ARCHITECTURE.md is missing"
    found = [
        f"{path.relative_to(ROOT)}: {reference!r}"
        for path in files
        for reference in OUTSIDE_REFERENCES
        if reference.encode() in path.read_bytes()
    ]
    assert not found, "point at docs/ARCHITECTURE.md instead:\n" + "\n".join(found)


def test_readme_links_the_architecture_page() -> None:
    assert "(docs/ARCHITECTURE.md)" in README.read_text()


def route_table(text: str) -> list[str]:
    """The rows of the first table headed `| route | what |`, as one table.

    A blank line ends a Markdown table: rows after it render as text, so they are
    not part of the table here either.
    """
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"\|\s*route\s*\|", line)),
        None,
    )
    assert start is not None, "no `| route | what |` table"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def documented_routes(rows: list[str]) -> list[tuple[str, str]]:
    """(method, path) of each `METHOD /path` code span in the first cell of each row.

    A span without a method (`/whep/<id>`) takes the previous span's; `<name>` is a
    path parameter. Other spans (content types) are not routes.
    """
    routes = []
    for row in rows:
        first_cell = re.split(r"(?<!\\)\|", row)[1]
        method = None
        for span in re.findall(r"`([^`]+)`", first_cell):
            words = span.split()
            if words[0] in METHODS:
                method = words[0]
                words = words[1:]
            if len(words) == 1 and words[0].startswith("/"):
                assert method is not None, f"no method before {span!r} in {row!r}"
                routes.append((method, words[0]))
    return routes


def registered_routes(app: web.Application) -> set[AbstractRoute]:
    # aiohttp adds HEAD beside every GET: documenting the GET documents both.
    return {r for r in app.router.routes() if r.method != "HEAD"}


async def resolve(app: web.Application, method: str, path: str) -> AbstractRoute:
    url = re.sub(r"<[^>]+>", "x", path)
    request = make_mocked_request(method, url, app=app)
    match = await app.router.resolve(request)
    assert match.http_exception is None, f"{method} {path} is no route of the app"
    route = match.route
    assert route is not None
    return route


@pytest.fixture(scope="module")
def app() -> web.Application:
    return create_app(Config(host="127.0.0.1", media_port=0, workers=1))


@pytest.mark.parametrize("document", [README, ARCHITECTURE], ids=lambda p: p.name)
async def test_route_table_lists_every_route_of_the_app(
    app: web.Application, document: Path
) -> None:
    """One table, every route the app registers, and no route it does not."""
    documented = documented_routes(route_table(document.read_text()))
    resolved = {await resolve(app, method, path) for method, path in documented}
    missing = sorted(
        f"{r.method} {r.resource.canonical if r.resource else '?'}"
        for r in registered_routes(app) - resolved
    )
    assert not missing, f"{document.name}'s route table lacks: {missing}"


def ws_row(text: str) -> str:
    rows = [row for row in route_table(text) if "`GET /ws`" in row]
    assert len(rows) == 1, "the route table has no single `GET /ws` row"
    return rows[0]


@pytest.mark.parametrize("document", [README, ARCHITECTURE], ids=lambda p: p.name)
def test_ws_contract_is_complete(document: Path) -> None:
    """Both directions of `/ws`: subscribe (with a view token), quality reports,
    unsubscribe; state, viewers and error events."""
    text = document.read_text()
    where = ws_row(text) if document == README else text
    absent = [word for word in WS_SENT + WS_RECEIVED if f'"{word}"' not in where]
    assert not absent, f"{document.name} does not show /ws's {absent}"


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value is not None:
                self.tags[value] = tag


@pytest.mark.parametrize("page", sorted(ELEMENT_IDS))
def test_web_client_has_every_element_id_of_the_contract(page: str) -> None:
    parser = _Ids()
    parser.feed((ROOT / "client" / page).read_text())
    missing = [i for i in ELEMENT_IDS[page] if i not in parser.tags]
    assert not missing, f"client/{page} lacks the ids {missing}"
    for (where, element_id), tag in ELEMENT_TAGS.items():
        if where == page:
            assert parser.tags[element_id] == tag, f"#{element_id} is not a <{tag}>"


def test_architecture_names_every_element_id_and_cli_flag() -> None:
    """The contracts section lists the element ids and every command with its flags."""
    text = ARCHITECTURE.read_text()
    ids = {i for page in ELEMENT_IDS.values() for i in page}
    absent = [f"#{i}" for i in sorted(ids) if f"#{i}`" not in text]
    commands = next(
        a.choices
        for a in _parser()._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    for name, command in commands.items():
        if f"`broadcast {name}" not in text:
            absent.append(f"broadcast {name}")
        for action in command._actions:
            absent += [
                f"broadcast {name} {flag}"
                for flag in action.option_strings
                if flag.startswith("--")
                and flag != "--help"
                and not re.search(rf"(?<![\w-]){flag}(?![\w-])", text)
            ]
    assert not absent, f"docs/ARCHITECTURE.md does not name {absent}"
