"""Render a paper's tables (recipes/<paper>/paper.yaml) from finished runs, in the paper's layout:
each cell is ours mean±std (n) beside the paper's value, Δ = ours − paper, and ✓/✗ against the
metric's tolerance. Smoke/subset runs are only ever shown in tables marked SMOKE."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmbench.recipes.loader import ResolvedRecipe, load_paper, resolve
from mmbench.recipes.schema import PaperCfg, RowCfg, TableCfg
from mmbench.results.aggregate import STD_DDOF, Aggregate, aggregate
from mmbench.results.store import find_runs

SMOKE_BANNER = "SMOKE: synthetic data and tiny encoders — these numbers check the pipeline, they are not comparable to the paper."


@dataclass
class Cell:
    ours: Aggregate | None
    paper: float | None
    tolerance: float | None
    status: str  # "ok", "not run", "not in mmbench", "no metric"
    paper_std: float | None = None  # the ± the paper prints, if any

    @property
    def delta(self) -> float | None:
        if self.ours is None or self.paper is None:
            return None
        return self.ours.mean - self.paper

    @property
    def within(self) -> bool | None:
        if self.delta is None or self.tolerance is None:
            return None
        return abs(self.delta) <= self.tolerance


@dataclass
class RenderedRow:
    row: RowCfg
    cells: list[Cell]
    footnotes: list[int] = field(default_factory=list)
    non_reportable: bool = False


def row_recipe(row: RowCfg, dataset: str, smoke: bool) -> ResolvedRecipe | None:
    if row.recipe is None:
        return None
    return resolve(row.recipe.format(dataset=dataset), row.overrides, smoke=smoke)


def runs_for(resolved: ResolvedRecipe, all_runs: list[dict], smoke: bool) -> list[dict]:
    return [r for r in all_runs
            if r.get("recipe") == resolved.name and r.get("config_hash") == resolved.config_hash
            and bool(r.get("smoke")) == smoke and (smoke or r.get("subset") is None)]


def build_table(paper: PaperCfg, table: TableCfg, all_runs: list[dict], smoke: bool, notes: list[str]) -> list[RenderedRow]:
    rendered = []
    for row in table.rows:
        cells, foot, non_reportable = [], [], False
        for i, (column, paper_value) in enumerate(zip(table.columns, row.paper)):
            tolerance = paper.tolerances.get(column.metric)
            paper_std = row.std[i] if row.std is not None else None
            resolved = row_recipe(row, column.dataset, smoke)
            if resolved is None:
                cells.append(Cell(None, paper_value, tolerance, "not in mmbench", paper_std))
                continue
            for text in [*resolved.recipe.deviations, *resolved.recipe.assumptions]:
                if text not in notes:
                    notes.append(text)
                number = notes.index(text) + 1
                if number not in foot:
                    foot.append(number)
            runs = runs_for(resolved, all_runs, smoke)
            non_reportable |= any(not r.get("reportable", True) for r in runs) and not smoke
            ours = aggregate(runs, column.split, column.metric)
            status = "ok" if ours else ("not run" if not runs else "no metric")
            cells.append(Cell(ours, paper_value, tolerance, status, paper_std))
        rendered.append(RenderedRow(row, cells, sorted(foot), non_reportable))
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
    mark = "" if smoke or cell.within is None else (" ✓" if cell.within else " ✗")
    return f"{ours} / {_paper(cell)} (Δ {cell.delta:+.2f}{mark})"


def render_markdown(paper: PaperCfg, tables: list[tuple[TableCfg, list[RenderedRow]]], notes: list[str], smoke: bool,
                    plots: dict[str, str] | None = None) -> str:
    lines = [f"# {paper.title}", ""]
    if smoke:
        lines += [f"> {SMOKE_BANNER}", ""]
    judged = "not judged in smoke tables" if smoke else (
        f"✓ when |Δ| ≤ tolerance: {', '.join(f'{k} {v}' for k, v in paper.tolerances.items()) or 'none set'}")
    lines += [f"Cells: ours mean±std (n seeds, std with ddof={STD_DDOF}) / paper (±std where the paper prints one; Δ = ours − paper; {judged}).", ""]
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
            label = r.row.label + "".join(f"[^{n}]" for n in own) + (" †" if r.non_reportable else "")
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
    if notes:
        lines += ["### Deviations and assumptions", ""]
        lines += [f"[^{i}]: {text}" for i, text in enumerate(notes, start=1)]
        lines.append("")
    return "\n".join(lines)


def render_csv(paper: PaperCfg, tables: list[tuple[TableCfg, list[RenderedRow]]], smoke: bool) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["paper", "table", "row", "group", "dataset", "split", "metric", "ours_mean", "ours_std", "n",
                     "paper_value", "delta", "within_tolerance", "status", "smoke", "paper_std"])
    for table, rows in tables:
        for r in rows:
            for column, cell in zip(table.columns, r.cells):
                writer.writerow([paper.paper, table.id, r.row.label, r.row.group or "", column.dataset, column.split,
                                 column.metric, cell.ours.mean if cell.ours else "", cell.ours.std if cell.ours and cell.ours.std is not None else "",
                                 cell.ours.n if cell.ours else 0, "" if cell.paper is None else cell.paper,
                                 "" if cell.delta is None else round(cell.delta, 4),
                                 "" if cell.within is None or smoke else cell.within, cell.status, smoke,
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


def report(paper_name: str, fmt: str = "md", smoke: bool = False, runs_root: Path | None = None,
           plot_dir: Path | None = None) -> str:
    """The paper's tables as md/latex/csv; with plot_dir, tables marked `plot:` are also drawn as PNGs."""
    from mmbench.report.plots import plot_table

    paper = load_paper(paper_name)
    all_runs = find_runs(runs_root)
    notes: list[str] = []
    tables = [(t, build_table(paper, t, all_runs, smoke, notes)) for t in paper.tables]
    plots = {}
    for table, rows in tables:
        if table.plot and plot_dir is not None:
            name = f"{paper_name}-{table.id}{'-smoke' if smoke else ''}.png"
            if plot_table(table, rows, plot_dir / name):
                plots[table.id] = name
    if fmt == "csv":
        return render_csv(paper, tables, smoke)
    if fmt == "latex":
        return render_latex(paper, tables, smoke)
    return render_markdown(paper, tables, notes, smoke, plots)


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
