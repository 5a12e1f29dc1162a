"""Image paths: resolved under an images root, never outside it; a missing image follows the
recipe's policy (error by default; TomBERT's one fixed substitute image as an opt-in)."""

from __future__ import annotations

from pathlib import Path

from mmbench.errors import DataError


def safe_image_path(root: Path, image_id: str) -> Path:
    """`root/image_id`, rejecting ids that are absolute or climb out of the root."""
    if not image_id or Path(image_id).is_absolute():
        raise DataError(f"image id {image_id!r} must be a relative path under {root}")
    path = (root / image_id).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"image id {image_id!r} escapes the images root {root}")
    return path


def resolve_image(root: Path, image_id: str, policy: str = "error", substitute: str | None = None) -> Path:
    path = safe_image_path(root, image_id)
    if path.exists():
        return path
    if policy == "substitute" and substitute:
        fallback = safe_image_path(root, substitute)
        if fallback.exists():
            return fallback
        raise DataError(f"image {image_id} is missing and the substitute {fallback} is missing too")
    raise DataError(
        f"image {path} is missing (data.missing_image=error; set data.missing_image=substitute for "
        f"TomBERT's fixed substitute, or provide the image)"
    )


def load_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
