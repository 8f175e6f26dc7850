"""The docs in docs/ are what code, help texts and tests point to: every pointer must resolve, and
nothing may point outside the repository (working notes, issue numbers)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
POINTER = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")  # docs/model.md#blockwise-contrastive-loss
LINK = re.compile(r"\]\(([\w.-]+\.md)?(?:#([\w-]+))?\)")  # markdown links inside docs/: (model.md#x), (#x)
FORBIDDEN = re.compile(r"\.\./shared|MAAVT_SPEC|DESIGN\.md|spec §|spec Appendix|\bissue #?\d+", re.IGNORECASE)
SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist", "runs", "demo_out"}


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub gives the headings of `markdown` (code fences skipped; repeats get -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        text = re.sub(r"`([^`]*)`", r"\1", m.group(1))  # code spans keep their text
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _repo_files(suffixes: tuple[str, ...]) -> list[Path]:
    out = []
    for f in ROOT.rglob("*"):
        rel = f.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in rel[:-1]):
            continue
        if f.is_file() and f.suffix in suffixes:
            out.append(f)
    return sorted(out)


def _unresolved(doc: str, anchor: str | None) -> str | None:
    path = DOCS / doc
    if not path.is_file():
        return f"docs/{doc} does not exist"
    if anchor and anchor not in github_anchors(path.read_text(encoding="utf-8")):
        return f"docs/{doc} has no heading with anchor #{anchor}"
    return None


def test_github_anchor_rules():
    md = "# MA-AVT as computed here\n## `torch.compile` and bf16\n```\n# not a heading\n```\n## Data\n## Data\n"
    assert github_anchors(md) == {"ma-avt-as-computed-here", "torchcompile-and-bf16", "data", "data-1"}


def test_docs_exist():
    assert (DOCS / "architecture.md").is_file() and (DOCS / "model.md").is_file()


def test_every_docs_pointer_in_the_repository_resolves():
    problems, count = [], 0
    for f in _repo_files((".py", ".md", ".sh")):
        if f.name == Path(__file__).name:
            continue  # its own examples are not pointers
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            for m in POINTER.finditer(line):
                count += 1
                why = _unresolved(m.group(1), m.group(2))
                if why:
                    problems.append(f"{f.relative_to(ROOT)}:{n}: {m.group(0)}: {why}")
    assert count > 0, "no docs/*.md pointer found anywhere: the pattern or the tree is wrong"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", ["architecture.md", "model.md"])
def test_links_between_docs_resolve(doc):
    problems = []
    for n, line in enumerate((DOCS / doc).read_text(encoding="utf-8").splitlines(), 1):
        for m in LINK.finditer(line):
            target, anchor = m.group(1) or doc, m.group(2)
            why = _unresolved(target, anchor)
            if why:
                problems.append(f"docs/{doc}:{n}: {m.group(0)}: {why}")
    assert not problems, "\n".join(problems)


def _scanned() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in ("maavt_fast", "kernels", "benchmarks", "tests"):
        files += [f for f in sorted((ROOT / top).rglob("*"))
                  if f.is_file() and "__pycache__" not in f.parts and f.name != Path(__file__).name]
    return files


def test_nothing_refers_outside_the_repository():
    hits = []
    for f in _scanned():
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files (plots)
        for n, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "references to working notes or issues (point to docs/ instead):\n" + "\n".join(hits)


def test_the_forbidden_patterns_catch_what_they_should():
    for bad in ("see ../shared/x", "MAAVT_SPEC.md", "DESIGN.md item 1", "(spec §4)", "(spec Appendix A)",
                "Targets of issue 6", "(Issue #4)"):
        assert FORBIDDEN.search(bad), bad
    for fine in ("docs/model.md#blockwise-contrastive-loss", "the shared tokens", "tissue 3"):
        assert not FORBIDDEN.search(fine), fine
