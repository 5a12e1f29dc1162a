"""results/tables/*.md: committed, true, and readable. Each paper is rendered without runs (what the
files hold) and compared with its file; the notes rules of mmbench.report.notes are measured on it."""

import re

import pytest

from mmbench.paths import REPO_ROOT
from mmbench.recipes.loader import load_paper, paper_names
from mmbench.report.tables import report, row_recipe

TABLES = REPO_ROOT / "results" / "tables"
REGENERATE = "`make tables` (= mmbench report --all --no-runs --out results/tables)"
MAX_MARKERS_PER_ROW = 3
MAX_FOOTNOTE_SHARE = 0.25


@pytest.fixture(scope="module")
def rendered():
    with pytest.MonkeyPatch.context() as patch:  # built-in recipes only, never a user's folder or runs
        patch.delenv("MMBENCH_RECIPES", raising=False)
        patch.setenv("MMBENCH_RUNS", str(REPO_ROOT / "results" / "no-runs-here"))
        return {paper: report(paper, no_runs=True) for paper in paper_names()}


def test_committed_tables_are_the_rendering_of_every_paper(rendered):
    committed = sorted(p.stem for p in TABLES.glob("*.md"))
    assert committed == sorted(rendered), f"results/tables/ holds {committed}, papers are {sorted(rendered)}: run {REGENERATE}"
    stale = [p for p, text in rendered.items() if (TABLES / f"{p}.md").read_text(encoding="utf-8") != text]
    assert not stale, f"results/tables/{{{','.join(stale)}}}.md differ from the recipes and paper.yaml: regenerate with {REGENERATE}"


def markers_per_row(text: str) -> dict[str, int]:
    return {line.split("|")[1].strip(): len(re.findall(r"\[\^\d+\]", line.split("|")[1]))
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| Method")}


def footnote_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\[\^\d+\]: ", line)]


def test_each_row_carries_at_most_three_footnotes(rendered):
    for paper, text in rendered.items():
        heavy = {row: n for row, n in markers_per_row(text).items() if n > MAX_MARKERS_PER_ROW}
        assert not heavy, f"{paper}: rows with more than {MAX_MARKERS_PER_ROW} footnote markers: {heavy}"


def test_footnote_text_is_at_most_a_quarter_of_each_file(rendered):
    for paper, text in rendered.items():
        share = sum(len(line) + 1 for line in footnote_lines(text)) / len(text)
        assert share <= MAX_FOOTNOTE_SHARE, f"{paper}: footnotes are {share:.0%} of the file"


def test_every_recipe_note_appears_exactly_once(rendered):
    for paper, text in rendered.items():
        footnotes = [line.split(": ", 1)[1] for line in footnote_lines(text)]
        assert len(footnotes) == len(set(footnotes)), f"{paper}: a footnote text twice"
        notes = set()
        for table in load_paper(paper).tables:
            for row in table.rows:
                notes |= {row.note} if row.note else set()
                for column in table.columns:
                    resolved = row_recipe(row, column.dataset, smoke=False)
                    if resolved is not None:
                        notes |= {*resolved.recipe.deviations, *resolved.recipe.assumptions}
        counts = {note: text.count(note) for note in notes}
        # a note that is the opening of a longer one is counted inside it too
        wrong = {n[:60]: c for n, c in counts.items() if c != 1 + sum(n in m for m in notes if m != n)}
        assert not wrong, f"{paper}: notes not written exactly once: {wrong}"


def test_rows_link_to_their_recipe_group(rendered):
    text = rendered["itm"]
    row = next(line for line in text.splitlines() if line.startswith("| ITM (released code)"))
    anchor = re.search(r"\[(R\d+)\]\(#(r\d+)\)", row)
    assert anchor and f'<a id="{anchor.group(2)}"></a>' in text
    section = text.split(f'<a id="{anchor.group(2)}"></a>', 1)[1]
    assert section.lstrip().startswith(f"### {anchor.group(1)} · `itm/{{dataset}}-official`")
    assert "Deviations from the paper:" in section.split("<a id=", 1)[0]
