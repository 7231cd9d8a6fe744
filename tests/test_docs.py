"""The README stays a newcomer's five minutes, and every link in the docs leads somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_reads_in_five_minutes():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_exists(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)}
            assert anchor in headings, f"{doc.name} links to {target}: no such heading in {linked.name}"


def test_every_find_option_is_documented_in_the_usage_page():
    from kdsearch.run.options import FIND_OPTIONS

    usage = (ROOT / "docs" / "usage.md").read_text()
    missing = [flag for option in FIND_OPTIONS for flag in option.cli_flags if flag.startswith("--") and f"`{flag}" not in usage]
    assert missing == []
