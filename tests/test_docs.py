"""README is a five-minute read: short, two set-up commands, and every link in it and in docs/ leads somewhere."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 300
SETUP_COMMANDS = ['pip install ".[app]" && python app.py', 'pip install ".[test]" && python -m pytest -q']

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", path.read_text()), re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else len(text)]


def test_readme_is_a_five_minute_read():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_readme_sets_up_with_exactly_two_commands_and_ci_runs_the_test_command():
    blocks = re.findall(r"^```bash\n(.*?)^```", section((REPO / "README.md").read_text(), "Set up"), re.S | re.M)
    assert [b.strip() for b in blocks] == SETUP_COMMANDS
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == SETUP_COMMANDS[1]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_leads_to_an_existing_file_and_anchor(document):
    broken = []
    for target in LINK.findall(prose(document.read_text())):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file}")
    assert not broken, "\n".join(broken)


def test_readme_links_every_documentation_page():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in LINK.findall(prose((REPO / "README.md").read_text()))}
    assert set(DOCUMENTS[1:]) <= linked, "docs/ pages README does not link to"


def test_the_slug_follows_githubs_rules():
    assert slug("Time per example: README's evaluation examples on a CPU and on a GPU") == \
        "time-per-example-readmes-evaluation-examples-on-a-cpu-and-on-a-gpu"
    assert slug("The 20-epoch backbone at full scale on a GPU: all 1000 lossless test images, AutoAttack's budget") == \
        "the-20-epoch-backbone-at-full-scale-on-a-gpu-all-1000-lossless-test-images-autoattacks-budget"
    assert slug("Sensitivity analysis (Sec. 3.3-3.4)") == "sensitivity-analysis-sec-33-34"
