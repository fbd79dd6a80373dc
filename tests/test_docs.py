"""The front door refers to nothing outside the repository: every link in the README and
under ``docs/`` leads to a file of the repository, every repository path they name exists,
and none points a reader at documents a user of the repository does not have."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target), ![alt](target)
CODE_PATH = re.compile(r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*/?)`")
# the first part of a path written in backticks that is meant as a file of this repository
TOP = ("core", "events", "dataset", "repository", "services", "workflows", "dashboard",
       "retrain", "tests", "docs", "manifests", "benchmarks", "scripts")
OUTSIDE = ("../shared", "DESIGN.md", "the team's", "beside this repository")


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_link_leads_to_a_file_of_the_repository(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT) or not path.exists():
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_every_repository_path_named_exists(page):
    named = {p for p in CODE_PATH.findall(page.read_text())
             if "/" in p and p.split("/")[0] in TOP and ".." not in p  # not `tests/services/...`
             and (p.endswith("/") or "." in p.rsplit("/", 1)[-1])}  # not a source `retrain/cli`
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_no_page_points_at_documents_outside_the_repository(page):
    text = page.read_text()
    assert [phrase for phrase in OUTSIDE if phrase in text] == []


def test_the_readme_leads_to_the_design():
    assert "](docs/design.md)" in (ROOT / "README.md").read_text()


def test_the_checks_catch_what_they_are_for(tmp_path):
    page = "see [the design](../shared/DESIGN.md), [ok](#x), `core/nosuch.py` and `core/`"
    assert LINK.findall(page) == ["../shared/DESIGN.md", "#x"]
    assert CODE_PATH.findall(page) == ["core/nosuch.py", "core/"]
    assert [phrase for phrase in OUTSIDE if phrase in page] == ["../shared", "DESIGN.md"]
