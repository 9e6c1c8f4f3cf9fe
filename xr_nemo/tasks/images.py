"""Benchmark images: where a record's image field points, and decoding it with a clear error.

Records carry images in three ways: a PIL image (hub datasets with an Image feature), a
`{"bytes", "path"}` dict (the same datasets read from Parquet), or a file name relative to the data
file (JSONL/CSV releases that ship an image folder). A relative name is looked for in the data file's
folder and the two above it (releases keep questions in a subfolder), each as is and under `images/`,
`imgs/` and `figures/` (and a benchmark's own folder names, such as VQA-RAD's `VQA_RAD Image Folder/`).
A hub row that names its image by file without carrying its bytes has nothing to resolve the name
against: that is `ImagesNotLocal`, one error for the benchmark, not a missing image per item.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from xr_nemo.data.records import DataError
from xr_nemo.errors import XrNemoError

ImageSource = Path | bytes | Image.Image
IMAGE_FOLDERS = ("", "images", "imgs", "figures")


class MissingImage(DataError):
    """An item's image file does not exist, or its record names no image."""


class UndecodableImage(DataError):
    """An item's image exists but is not an image PIL can decode."""


class UnusableImage(DataError):
    """An item's image decodes, but the model cannot take it (e.g. a 1-pixel-wide strip)."""


class ImagesNotLocal(XrNemoError):
    """Records read from the hub name their images by file but carry no image bytes, so the names have
    no folder to be found in (the benchmark must be given as a local folder with its images)."""


def image_source(
    value: Any, base: Path | None, where: str, folders: tuple[str, ...] = IMAGE_FOLDERS
) -> ImageSource:
    """What a record's image field refers to; a missing file is reported when the image is loaded.
    `base` is the data file's folder, None for hub rows."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes) and value:
        return value
    if not isinstance(value, str) or not value.strip():
        raise MissingImage("the record names no image", where=where, fix="drop the record or add its image")
    path = Path(value.strip())
    if path.is_absolute():
        return path
    if base is None:
        raise ImagesNotLocal(
            f"the records name their images by file ({value.strip()!r}) but carry no image bytes, and "
            "hub rows have no folder to find those files in",
            where=where,
        )
    roots = (base, base.parent, base.parent.parent)
    candidates = [root / folder / path for root in roots for folder in folders]
    return next((c for c in candidates if c.exists()), candidates[0])


def load_image(source: ImageSource, where: str) -> Image.Image:
    """The image as RGB, fully decoded (so a truncated file fails here, not mid-generation)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, Path) and not source.exists():
        raise MissingImage(
            f"image file {source} does not exist",
            where=where,
            fix="download the benchmark's images next to its data file (or in images/), or drop the item",
        )
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        what = f"image file {source}" if isinstance(source, Path) else "embedded image bytes"
        raise UnusableImage(
            f"{what} claims more pixels than is safe to decode ({error})",
            where=where,
            fix="drop the item, or raise PIL.Image.MAX_IMAGE_PIXELS if the image is genuine",
        ) from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        what = f"image file {source}" if isinstance(source, Path) else "embedded image bytes"
        raise UndecodableImage(f"{what} cannot be decoded ({error})", where=where) from error
