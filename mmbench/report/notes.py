"""A paper report's notes, each written once.

- **Footnotes** sit on the rows whose numbers they change, at most a few a row: a row's own `note`
  (paper.yaml), and the recipe notes its `footnotes:` names (a deviation from the paper, a value the
  paper leaves out that we chose) on rows that have a paper number to compare.
- Every other note of the recipes behind the rows (the rest of `deviations` and `assumptions`, and
  `sources`: where each setting comes from) goes in one "Recipes, assumptions and deviations"
  section, grouped by the row's recipe (`itm/{dataset}` covers itm/twitter15 and itm/twitter17);
  each row links to its group. A note a later group shares with an earlier one is counted, not repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmbench.recipes.loader import ResolvedRecipe

SECTION = "Recipes, assumptions and deviations"


@dataclass
class RecipeGroup:
    number: int
    template: str  # the row's recipe, e.g. "itm/{dataset}"
    members: list[ResolvedRecipe] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"r{self.number}"

    @property
    def link(self) -> str:
        return f"[R{self.number}](#{self.anchor})"


def footnote_notes(resolved: ResolvedRecipe) -> list[str]:
    """The recipe's notes its `footnotes:` openings name (the loader checks each names exactly one)."""
    notes = [*resolved.recipe.deviations, *resolved.recipe.assumptions]
    return [next(n for n in notes if n.startswith(opening)) for opening in resolved.recipe.footnotes]


class Notes:
    """Footnote numbers and recipe groups of one paper's report, in order of first use."""

    def __init__(self) -> None:
        self.footnotes: list[str] = []
        self.groups: dict[str, RecipeGroup] = {}

    def footnote(self, text: str) -> int:
        if text not in self.footnotes:
            self.footnotes.append(text)
        return self.footnotes.index(text) + 1

    def group(self, template: str, resolved: ResolvedRecipe) -> RecipeGroup:
        group = self.groups.setdefault(template, RecipeGroup(len(self.groups) + 1, template))
        if all(m.name != resolved.name for m in group.members):
            group.members.append(resolved)
        return group

    def render_footnotes(self) -> list[str]:
        return [f"[^{i}]: {text}" for i, text in enumerate(self.footnotes, start=1)]

    def render_section(self) -> list[str]:
        if not self.groups:
            return []
        lines = [f"## {SECTION}", "",
                 "Every note of the recipes behind the rows above, once each, grouped by the row's recipe "
                 "(a row's R-link leads here). The footnotes in the tables are the notes that change a compared "
                 "number: a deviation from the paper, or a value the paper does not give that we chose. "
                 "`mmbench show RECIPE` prints a recipe fully resolved.", ""]
        printed: dict[tuple[str, str], int] = {}  # (kind, text) → number of the group that printed it
        for group in self.groups.values():
            lines += self._group_lines(group, printed)
        return lines

    def _group_lines(self, group: RecipeGroup, printed: dict[tuple[str, str], int]) -> list[str]:
        names = [m.name for m in group.members]
        first = group.members[0].recipe
        lines = [f'<a id="{group.anchor}"></a>', "",
                 f"### R{group.number} · `{group.template}` ({', '.join(names)}; variant {first.variant})", ""]
        if first.description:
            lines += [first.description, ""]
        shared: dict[int, int] = {}
        for kind, title in (("deviations", "Deviations from the paper"),
                            ("assumptions", "Assumptions (what the paper leaves out, and how we read it)"),
                            ("sources", "Where the settings come from")):
            items = []
            for text, owners in self._items(group, kind):
                key = (kind, text)
                if key in printed:
                    shared[printed[key]] = shared.get(printed[key], 0) + 1
                    continue
                printed[key] = group.number
                only = "" if len(owners) == len(names) else f" ({', '.join(owners)} only)"
                cited = text in self.footnotes and kind != "sources"
                items.append(f"- footnote [^{self.footnote(text)}]{only}" if cited else f"- {text}{only}")
            if items:
                lines += [f"{title}:", "", *items, ""]
        if shared:
            lines += ["Shared with " + ", ".join(f"[R{n}](#r{n}) ({count} notes)" for n, count in sorted(shared.items()))
                      + ", listed there.", ""]
        return lines

    @staticmethod
    def _items(group: RecipeGroup, kind: str) -> list[tuple[str, list[str]]]:
        """The group's notes of one kind in order, each with the member recipes that carry it."""
        owners: dict[str, list[str]] = {}
        for member in group.members:
            recipe = member.recipe
            texts = ([f"`{k}`: {v}" for k, v in recipe.sources.items()] if kind == "sources"
                     else getattr(recipe, kind))
            for text in texts:
                owners.setdefault(text, []).append(member.name)
        return list(owners.items())
