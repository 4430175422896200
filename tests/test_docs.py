"""The README and docs/: every relative link resolves (file and heading), docs/README.md lists every page,
and the README stays a first-five-minutes page."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids of a Markdown page: lower case, punctuation dropped, spaces to hyphens, a repeated
    heading numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def links(page: Path) -> list[str]:
    """The relative link targets of a page, outside code blocks."""
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if not re.match(r"[a-z]+:", t)]


def test_anchors_follow_github_s_rule():
    page = REPO / "docs" / "results.md"
    assert "quick-presets-how-long-they-train" in anchors(page)
    assert "lora-on-the-default-model-mpnet_base" in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that id in {file.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_docs_index_lists_every_page():
    index = REPO / "docs" / "README.md"
    listed = {(index.parent / t.partition("#")[0]).resolve() for t in links(index)}
    missing = [p.name for p in PAGES[1:] if p != index and p.resolve() not in listed]
    assert not missing, f"docs/README.md does not link {missing}"


def test_the_readme_is_short_with_the_two_commands_before_the_first_figure():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_figure = next(i for i, line in enumerate(lines) if line.startswith("!["))
    commands = [i for i, line in enumerate(lines) if line.startswith("pip install torch==2.13.0")]
    assert len(commands) == 2 and max(commands) < first_figure


def test_the_architecture_page_names_every_module():
    page = (REPO / "docs" / "architecture.md").read_text()
    modules = [p for d in ("ablation", "analysis") for p in sorted((REPO / d).glob("*.py"))]
    missing = [
        f"{p.parent.name}/{p.name}" for p in modules if p.name != "__init__.py" and f"  {p.name} " not in page
    ]
    assert not missing, f"docs/architecture.md does not describe {missing}"


def test_the_configuration_reference_is_what_the_code_declares():
    from ablation.reference import OUT, markdown

    assert OUT.read_text() == markdown(), (
        "docs/configuration-reference.md is stale: run python -m ablation.reference"
    )
    page = markdown()
    from ablation.config import AblateConfig, AdapterConfig, MethodConfig

    for cls, group in ((AdapterConfig, "adapter"), (MethodConfig, "method"), (AblateConfig, "ablate")):
        for f in dataclasses.fields(cls):
            assert f"| `{group}.{f.name}` |" in page  # every field has its row
    # what is allowed comes from the checks themselves: a check's message is the row's
    assert (
        "one of `zero`, `mean`, `scale`, `keep`" in page and "a positive integer (bottleneck size m)" in page
    )
