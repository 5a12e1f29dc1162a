"""User-facing errors: one line that names the file and the line or key at fault."""

from __future__ import annotations


class MmbenchError(Exception):
    """An error the CLI prints as one line (no traceback) and exits 2 on."""


class RecipeError(MmbenchError):
    """A recipe file or override is invalid."""


class DataError(MmbenchError):
    """Raw or prepared data is missing or malformed."""


class WeightsNotFound(MmbenchError):
    """A pretrained weight is not available offline."""


def located(path, where, message: str) -> str:
    """Format `path:where: message` (where = line number or key path)."""
    return f"{path}:{where}: {message}" if where not in (None, "") else f"{path}: {message}"
