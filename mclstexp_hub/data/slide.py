"""Full-resolution H&E images: one ``Slide`` interface for flat images and pyramidal slides.

Patches are always cut from the full-resolution image (level 0), never from a downsampled
PNG. Two back ends:

* ``ArraySlide`` — JPEG / PNG / flat TIFF, decoded once into an RGB ``uint8`` array; each patch
  is a numpy slice. A HER2+ image (≈ 9,300 × 9,900 px) costs ≈ 280 MB while open.
* ``PyramidSlide`` — pyramidal TIFF / SVS / NDPI … through tiffslide (``pip install
  mclstexp-hub[slides]``), or OpenSlide when tiffslide is absent; each patch is read region by
  region, so peak memory stays bounded however large the slide is.

Pixels outside the image are filled with ``PAD_VALUE`` (255, white: the colour of empty glass
on a brightfield slide), so spots near the border get a full-size patch whose missing part
looks like background rather than like dark tissue.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image

PAD_VALUE = 255
"""Fill value for patch pixels that fall outside the image (white slide background)."""

FLAT_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
PYRAMID_SUFFIXES = {".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".qptiff"}

_SLIDES_EXTRA = (
    "Reading pyramidal slides needs tiffslide (or openslide-python): "
    "pip install 'mclstexp-hub[slides]'"
)


def _crop_window(cx: float, cy: float, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size``-pixel window centred on (cx, cy).

    For an even size the centre pixel is the one right of / below the exact centre, so a
    spot at integer centre c covers [c - size/2, c + size/2).
    """
    x0 = int(np.floor(cx + 0.5)) - size // 2
    y0 = int(np.floor(cy + 0.5)) - size // 2
    return x0, y0


class Slide:
    """A full-resolution image that can hand out square patches centred on spots."""

    path: Path
    width: int
    height: int
    mpp: float | None = None  # microns per pixel where the file records it

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of the window at (x0, y0); outside pixels = PAD_VALUE."""
        raise NotImplementedError

    def read_patch(self, center_x: float, center_y: float, size: int) -> np.ndarray:
        """(size, size, 3) uint8 patch centred on a full-resolution pixel position."""
        x0, y0 = _crop_window(center_x, center_y, size)
        return self.read_region(x0, y0, size, size)

    def thumbnail(self, max_size: int) -> Image.Image:
        raise NotImplementedError

    def contains(self, x: float, y: float) -> bool:
        return 0 <= x < self.width and 0 <= y < self.height

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.width}x{self.height})"


class ArraySlide(Slide):
    """A flat image decoded once into memory."""

    def __init__(self, path: str | Path, array: np.ndarray | None = None):
        self.path = Path(path)
        if array is None:
            array = _decode_flat_image(self.path)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected an RGB uint8 image, got {array.shape}")
        self._array = array
        self.height, self.width = array.shape[:2]

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + w, self.width), min(y0 + h, self.height)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = self._array[sy0:sy1, sx0:sx1]
        return out

    def thumbnail(self, max_size: int) -> Image.Image:
        img = Image.fromarray(self._array)
        img.thumbnail((max_size, max_size))
        return img

    def close(self) -> None:
        self._array = np.zeros((0, 0, 3), dtype=np.uint8)


class PyramidSlide(Slide):
    """A tiled / pyramidal slide read region by region (tiffslide or OpenSlide)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._slide = _open_pyramid(self.path)
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        mpp = self._slide.properties.get("tiffslide.mpp-x") or self._slide.properties.get(
            "openslide.mpp-x"
        )
        self.mpp = float(mpp) if mpp not in (None, "") else None

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + w, self.width), min(y0 + h, self.height)
        if sx1 <= sx0 or sy1 <= sy0:
            return out
        try:
            region = self._slide.read_region((sx0, sy0), 0, (sx1 - sx0, sy1 - sy0))
        except Exception as exc:
            raise ValueError(
                f"{self.path}: could not read region x={sx0}, y={sy0}, "
                f"{sx1 - sx0}x{sy1 - sy0} ({exc}); the slide file may be truncated or corrupt"
            ) from exc
        arr = np.asarray(region)
        if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA: transparent = outside the scanned area
            alpha = arr[..., 3:4].astype(np.float32) / 255.0
            arr = (arr[..., :3] * alpha + PAD_VALUE * (1 - alpha)).round().astype(np.uint8)
        elif arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = arr[..., :3]
        return out

    def thumbnail(self, max_size: int) -> Image.Image:
        return self._slide.get_thumbnail((max_size, max_size)).convert("RGB")

    def close(self) -> None:
        self._slide.close()


def _decode_flat_image(path: Path) -> np.ndarray:
    """Decode a JPEG/PNG/flat TIFF fully; truncated or unreadable files raise ValueError."""
    if not path.is_file():
        raise FileNotFoundError(
            f"image not found: {path}. Pass the full-resolution H&E image of this section."
        )
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # whole-slide images exceed PIL's decompression-bomb guard
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # forces a full decode: truncated files fail here, not mid-build
                # one copy out of PIL (read-only view of its bytes); convert only when needed
                rgb = img if img.mode == "RGB" else img.convert("RGB")
                array = np.asarray(rgb)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"{path}: cannot decode image ({exc}). The file is unreadable or truncated; "
            "re-download or re-export it."
        ) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return array


def _is_pyramidal_tiff(path: Path) -> bool:
    """True for tiled or multi-resolution TIFFs (read region by region, never whole)."""
    try:
        import tifffile
    except ImportError:
        return False  # no tifffile: treat as flat, PIL will decode it
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.levels) > 1 or bool(tif.pages[0].is_tiled)
    except Exception as exc:
        raise ValueError(
            f"{path}: not a readable TIFF ({exc}); re-export the image or check the path"
        ) from exc


def _open_pyramid(path: Path):
    if not path.is_file():
        raise FileNotFoundError(
            f"slide not found: {path}. Pass the full-resolution H&E slide of this section."
        )
    try:
        import tiffslide

        try:
            return tiffslide.TiffSlide(path)
        except Exception as exc:
            raise ValueError(f"{path}: tiffslide cannot open this slide ({exc})") from exc
    except ImportError:
        pass
    try:
        import openslide
    except ImportError as exc:
        raise ImportError(f"{path}: {_SLIDES_EXTRA}") from exc
    try:
        return openslide.OpenSlide(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: OpenSlide cannot open this slide ({exc})") from exc


def open_slide(path: str | Path) -> Slide:
    """Open a full-resolution image, choosing the in-memory or region-by-region back end.

    JPEG/PNG/flat TIFF are decoded once; tiled or pyramidal TIFF and vendor formats (SVS, NDPI,
    …) are read region by region. Missing file → FileNotFoundError; corrupt or truncated file →
    ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"image not found: {path}. Pass the full-resolution H&E image of this section."
        )
    suffix = path.suffix.lower()
    if suffix in PYRAMID_SUFFIXES:
        return PyramidSlide(path)
    if suffix in TIFF_SUFFIXES and _is_pyramidal_tiff(path):
        return PyramidSlide(path)
    return ArraySlide(path)
