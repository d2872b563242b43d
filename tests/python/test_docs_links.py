"""Every relative link in README.md, docs/ and the project's other Markdown
files points at a file (and, with a #fragment, a heading) inside the
repository: a clone carries its own documentation, with no dead links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SKIP_DIRS = {"target", "node_modules", ".git", "__pycache__"}


def markdown_files() -> list[Path]:
    return sorted(
        p for p in REPO.rglob("*.md") if not SKIP_DIRS.intersection(p.relative_to(REPO).parts)
    )


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces → '-'."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks are not links
    return [l for l in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", l)]


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(doc: Path):
    problems = []
    for link in relative_links(doc):
        target, _, fragment = link.partition("#")
        resolved = (doc.parent / target).resolve() if target else doc
        if REPO not in resolved.parents and resolved != REPO:
            problems.append(f"{link}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{link}: no such file")
            continue
        if fragment and resolved.suffix == ".md" and fragment.lower() not in anchors(resolved):
            problems.append(f"{link}: no heading #{fragment} in {resolved.relative_to(REPO)}")
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(problems)


def test_the_docs_the_readme_promises_exist_and_readme_links_them():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for doc in ["docs/domain.md", "docs/architecture.md", "docs/operations.md", "infra/BROKER-NOTES.md"]:
        assert (REPO / doc).is_file(), doc
    for doc in ["docs/domain.md", "docs/architecture.md", "docs/operations.md"]:
        assert f"({doc}" in readme, f"README does not link {doc}"
    assert "../shared" not in readme
