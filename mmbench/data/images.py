"""Image paths: resolved under an images root, never outside it; a missing image follows the
recipe's policy (error by default; TomBERT's one fixed substitute image as an opt-in)."""

from __future__ import annotations

import contextlib
import re
import warnings
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


# 8192 × 8192: far above any dataset's photos (Twitter, Flickr30K and COCO images are ~0.2-2 MP); an
# image over it is refused from its header, before a byte is decoded (a 100 KB PNG can claim 30000²).
MAX_PIXELS = 1 << 26


@contextlib.contextmanager
def open_image(path: Path):
    """PIL's lazy open (reads the header only), refused in one line naming the file when the header
    claims more than MAX_PIXELS; PIL's own decompression-bomb guard is turned into the same line."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:  # PIL's own guard, at over twice its MAX_IMAGE_PIXELS
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        raise DataError(_too_large(path, f"{claimed.group(1) if claimed else 'over ' + str(MAX_PIXELS)} pixels")) from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise DataError(_too_large(path, f"{width}×{height} pixels"))
        yield image


def _too_large(path: Path, claimed: str) -> str:
    return f"{path}: image header claims {claimed}, over the {MAX_PIXELS} (8192²) an image may have; refusing to decode it"


def load_rgb(path: Path):
    from PIL import UnidentifiedImageError

    try:
        with open_image(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
