"""Render a paper's tables (recipes/<paper>/paper.yaml) from finished runs, in the paper's layout:
each cell is ours mean±std (n) beside the paper's value, Δ = ours − paper, and a verdict from our seeds
(mmbench.report.verdict). Notes: mmbench.report.notes. Smoke/subset runs are only ever shown in
tables marked SMOKE."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmbench.recipes.loader import ResolvedRecipe, load_paper, resolve
from mmbench.recipes.schema import PaperCfg, RowCfg, TableCfg
from mmbench.report.notes import Notes, RecipeGroup, footnote_notes
from mmbench.report.verdict import CONFIDENCE, MARK, Verdict, summary, verdict
from mmbench.results.aggregate import STD_DDOF, Aggregate, aggregate
from mmbench.results.store import find_runs

SMOKE_BANNER = "SMOKE: synthetic data and tiny encoders — these numbers check the pipeline, they are not comparable to the paper."


@dataclass
class Cell:
    ours: Aggregate | None
    paper: float | None
    status: str  # "ok", "not run", "not in mmbench", "no metric"
    paper_std: float | None = None  # the ± the paper prints, if any

    @property
    def delta(self) -> float | None:
        if self.ours is None or self.paper is None:
            return None
        return self.ours.mean - self.paper

    @property
    def verdict(self) -> Verdict | None:
        return verdict(self.ours, self.paper, self.paper_std)

    @property
    def compared(self) -> bool:
        """A paper number with an mmbench row beside it (what the summary line counts)."""
        return self.paper is not None and self.status != "not in mmbench"


@dataclass
class RenderedRow:
    row: RowCfg
    cells: list[Cell]
    footnotes: list[int] = field(default_factory=list)
    non_reportable: bool = False
    group: RecipeGroup | None = None


def row_recipe(row: RowCfg, dataset: str, smoke: bool) -> ResolvedRecipe | None:
    if row.recipe is None:
        return None
    return resolve(row.recipe.format(dataset=dataset), row.overrides, smoke=smoke)


def runs_for(resolved: ResolvedRecipe, all_runs: list[dict], smoke: bool) -> list[dict]:
    return [r for r in all_runs
            if r.get("recipe") == resolved.name and r.get("config_hash") == resolved.config_hash
            and bool(r.get("smoke")) == smoke and (smoke or r.get("subset") is None)]


def build_table(paper: PaperCfg, table: TableCfg, all_runs: list[dict], smoke: bool, notes: Notes) -> list[RenderedRow]:
    rendered = []
    for row in table.rows:
        cells, foot, non_reportable, group = [], [], False, None
        if row.note:
            foot.append(notes.footnote(row.note))
        compares = any(v is not None for v in row.paper)  # recipe footnotes only where a paper number is compared
        for i, (column, paper_value) in enumerate(zip(table.columns, row.paper)):
            paper_std = row.std[i] if row.std is not None else None
            resolved = row_recipe(row, column.dataset, smoke)
            if resolved is None:
                cells.append(Cell(None, paper_value, "not in mmbench", paper_std))
                continue
            group = notes.group(row.recipe, resolved)
            for text in footnote_notes(resolved) if compares else []:
                number = notes.footnote(text)
                if number not in foot:
                    foot.append(number)
            runs = runs_for(resolved, all_runs, smoke)
            non_reportable |= any(not r.get("reportable", True) for r in runs) and not smoke
            ours = aggregate(runs, column.split, column.metric)
            status = "ok" if ours else ("not run" if not runs else "no metric")
            cells.append(Cell(ours, paper_value, status, paper_std))
        rendered.append(RenderedRow(row, cells, sorted(foot), non_reportable, group))
    return rendered


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _paper(cell: Cell) -> str:
    return _fmt(cell.paper) + (f"±{_fmt(cell.paper_std)}" if cell.paper is not None and cell.paper_std is not None else "")


def format_cell(cell: Cell, smoke: bool) -> str:
    if cell.ours is None:
        return f"{'—' if cell.status == 'not in mmbench' else cell.status} / {_paper(cell)}"
    ours = _fmt(cell.ours.mean) + (f"±{_fmt(cell.ours.std)}" if cell.ours.std is not None else "") + f" ({cell.ours.n})"
    if cell.paper is None:
        return f"{ours} / —"
    judged = cell.verdict
    mark = "" if smoke or judged is None else f", {MARK[judged.status]}"
    return f"{ours} / {_paper(cell)} (Δ {cell.delta:+.2f}{mark})"


def verdict_line(tables: list[tuple[TableCfg, list[RenderedRow]]]) -> str:
    cells = [c for _, rows in tables for r in rows for c in r.cells if c.compared]
    return f"Verdict: {summary([c.verdict for c in cells], len(cells))}."


def render_markdown(paper: PaperCfg, tables: list[tuple[TableCfg, list[RenderedRow]]], notes: Notes, smoke: bool,
                    plots: dict[str, str] | None = None) -> str:
    lines = [f"# {paper.title}", ""]
    if smoke:
        lines += [f"> {SMOKE_BANNER}", ""]
    judged = "no verdicts in smoke tables" if smoke else (
        f"a verdict: ✓ when the paper's number lies inside our {CONFIDENCE:.0%} interval (a t-interval on the seed "
        "mean, widened by the paper's std where printed), ✗ outside it; one seed gets no verdict (README, \"Reading a report\")")
    lines += [f"Cells: ours mean±std (n seeds, std with ddof={STD_DDOF}) / paper (±std where the paper prints one), "
              f"Δ = ours − paper, and {judged}.", ""]
    if not smoke:
        lines += [verdict_line(tables), ""]
    for table, rows in tables:
        lines += [f"## {table.title}" + (" — SMOKE" if smoke else ""), ""]
        lines.append("| Method | " + " | ".join(c.header for c in table.columns) + " |")
        lines.append("|---|" + "---|" * len(table.columns))
        group = None
        # footnotes every mmbench row shares are cited once under the table, not on each row
        ours = [set(r.footnotes) for r in rows if r.row.recipe]
        shared = set.intersection(*ours) if len(ours) > 1 else set()
        for r in rows:
            if r.row.group and r.row.group != group:
                group = r.row.group
                lines.append(f"| *{group}* |" + " |" * len(table.columns))
            own = [n for n in r.footnotes if n not in shared]
            label = (r.row.label + "".join(f"[^{n}]" for n in own) + (f" {r.group.link}" if r.group else "")
                     + (" †" if r.non_reportable else ""))
            lines.append(f"| {label} | " + " | ".join(format_cell(c, smoke) for c in r.cells) + " |")
        lines.append("")
        if shared:
            lines.append("Notes for every mmbench row of this table: " + " ".join(f"[^{n}]" for n in sorted(shared)))
        aggregations = sorted({r.row.aggregation for r in rows if r.row.recipe})
        if aggregations:
            lines.append(f"Paper's aggregation for our rows: {'; '.join(aggregations)}.")
        lines += [f"- {note}" for note in table.notes]
        if table.plot:
            image = (plots or {}).get(table.id)
            lines.append(f"\n![{table.title}]({image})" if image else "- Plot: written by `mmbench report --out DIR` once runs exist.")
        if any(r.row.recipe is None for r in rows):
            lines.append("- — : a row mmbench does not implement (the paper's number only).")
        if any(r.non_reportable for r in rows):
            lines.append("- † non-reportable: model selection used the test set (the released code's protocol).")
        lines.append("")
    section = notes.render_section()  # before the footnotes: it may cite them
    if notes.footnotes:
        lines += ["### Footnotes", "", *notes.render_footnotes(), ""]
    lines += section
    return "\n".join(lines).rstrip("\n") + "\n"


def render_csv(paper: PaperCfg, tables: list[tuple[TableCfg, list[RenderedRow]]], smoke: bool) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["paper", "table", "row", "group", "dataset", "split", "metric", "ours_mean", "ours_std", "n",
                     "paper_value", "delta", "verdict", "ci_low", "ci_high", "status", "smoke", "paper_std"])
    for table, rows in tables:
        for r in rows:
            for column, cell in zip(table.columns, r.cells):
                judged = None if smoke else cell.verdict
                writer.writerow([paper.paper, table.id, r.row.label, r.row.group or "", column.dataset, column.split,
                                 column.metric, cell.ours.mean if cell.ours else "", cell.ours.std if cell.ours and cell.ours.std is not None else "",
                                 cell.ours.n if cell.ours else 0, "" if cell.paper is None else cell.paper,
                                 "" if cell.delta is None else round(cell.delta, 4),
                                 "" if judged is None else judged.status,
                                 *(("", "") if judged is None or judged.low is None else (round(judged.low, 4), round(judged.high, 4))),
                                 cell.status, smoke,
                                 "" if cell.paper_std is None else cell.paper_std])
    return out.getvalue()


def render_latex(paper: PaperCfg, tables: list[tuple[TableCfg, list[RenderedRow]]], smoke: bool) -> str:
    parts = []
    for table, rows in tables:
        parts.append("\\begin{table}[t]\\centering")
        parts.append(f"\\caption{{{_tex(table.title)}{' (smoke)' if smoke else ''}. Ours (paper).}}")
        parts.append("\\begin{tabular}{l" + "c" * len(table.columns) + "}\\toprule")
        parts.append("Method & " + " & ".join(_tex(c.header) for c in table.columns) + " \\\\ \\midrule")
        for r in rows:
            cells = []
            for cell in r.cells:
                ours = "--" if cell.ours is None else (_fmt(cell.ours.mean) + (f"$\\pm${_fmt(cell.ours.std)}" if cell.ours.std is not None else ""))
                printed = _paper(cell).replace("±", "$\\pm$")
                cells.append(f"{ours} ({printed})")
            parts.append(f"{_tex(r.row.label)} & " + " & ".join(cells) + " \\\\")
        parts.append("\\bottomrule\\end{tabular}\\end{table}\n")
    return "\n".join(parts)


def _tex(text: str) -> str:
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text


@dataclass
class Report:
    text: str
    written: list[Path]  # the PNGs drawn into plot_dir


def render(paper_name: str, fmt: str = "md", smoke: bool = False, runs_root: Path | None = None,
           plot_dir: Path | None = None, tables: list[str] | None = None, no_runs: bool = False) -> Report:
    """The paper's tables (or only those ids) as md/latex/csv; with plot_dir, tables marked `plot:` are
    also drawn as PNGs. no_runs: render without any run (what results/tables/ commits)."""
    from mmbench.report.plots import plot_table

    paper = load_paper(paper_name)
    if tables:
        known = [t.id for t in paper.tables]
        missing = [t for t in tables if t not in known]
        if missing:
            from mmbench.errors import MmbenchError
            from mmbench.registry import unknown_name_message

            raise MmbenchError(unknown_name_message("table", missing[0], known))
    all_runs = [] if no_runs else find_runs(runs_root)
    notes = Notes()
    built = [(t, build_table(paper, t, all_runs, smoke, notes)) for t in paper.tables if not tables or t.id in tables]
    plots, written = {}, []
    for table, rows in built:
        if table.plot and plot_dir is not None:
            name = f"{paper_name}-{table.id}{'-smoke' if smoke else ''}.png"
            if plot_table(table, rows, plot_dir / name, smoke):
                plots[table.id] = name
                written.append(plot_dir / name)
    if fmt == "csv":
        return Report(render_csv(paper, built, smoke), written)
    if fmt == "latex":
        return Report(render_latex(paper, built, smoke), written)
    return Report(render_markdown(paper, built, notes, smoke, plots), written)


def report(paper_name: str, fmt: str = "md", smoke: bool = False, runs_root: Path | None = None,
           plot_dir: Path | None = None, tables: list[str] | None = None, no_runs: bool = False) -> str:
    """The text of `render` (the plots it draws are in plot_dir)."""
    return render(paper_name, fmt, smoke, runs_root, plot_dir, tables, no_runs).text


def plan(paper_name: str, dataset: str | None, smoke: bool) -> list[ResolvedRecipe]:
    """Every distinct (recipe, overrides) the paper's tables reference, for one dataset or all."""
    paper = load_paper(paper_name)
    seen, out = set(), []
    for table in paper.tables:
        for row in table.rows:
            for column in table.columns:
                if row.recipe is None or (dataset is not None and column.dataset != dataset):
                    continue
                resolved = row_recipe(row, column.dataset, smoke)
                key = (resolved.name, resolved.config_hash)
                if key not in seen:
                    seen.add(key)
                    out.append(resolved)
    return out


def no_runs_warning(paper: str, smoke: bool) -> str | None:
    """A paper with no finished run: one line saying where report looked, and whether runs of
    the other kind (smoke / full) exist there."""
    from mmbench.paths import runs_root

    names = {row.recipe.format(dataset=c.dataset) for t in load_paper(paper).tables for row in t.rows if row.recipe
             for c in t.columns}
    runs = [r for r in find_runs(warn=lambda message: None) if r.get("recipe") in names]
    if any(bool(r.get("smoke")) == smoke for r in runs):
        return None
    other = len(runs)
    hint = (f"; {other} smoke run(s) exist there: add --smoke" if other and not smoke else
            f"; {other} full run(s) exist there: drop --smoke" if other else "")
    return f"no finished {'smoke ' if smoke else ''}runs of {paper}'s tables under {runs_root()} (MMBENCH_RUNS){hint}"
