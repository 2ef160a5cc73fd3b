"""The one slide reader: full-resolution H&E images → square patches centred on spots.

Every patch this project sees — `mclstexp data build`, the pipeline, `mclstexp predict --tile`,
the benchmark — is cut here, with one crop convention (the authors' `dataset.py`): the centre is
``floor(pixel)`` and a ``size``-pixel patch covers ``[c - size // 2, c - size // 2 + size)`` —
for 224 px ``(x - 112, y - 112, x + 112, y + 112)`` as in their PIL crop. Rounding instead moves
≈ 75 % of HER2+ patches by one pixel, so a converted checkpoint would not see the pixels it was
trained on. The convention's name, `CROP_CONVENTION`, is recorded in datasets and processor
configs.

Two back ends behind one `Slide` interface:

* ``ArraySlide`` — JPEG / PNG / flat TIFF (or an in-memory PIL image / array), decoded once into
  an RGB ``uint8`` array. Decoding is capped at `max_image_pixels()` (header checked before any
  pixel is decoded; ``MCLSTEXP_MAX_IMAGE_PIXELS`` changes it), truncated data is refused, and
  16-bit / float / palette / CMYK / alpha images are converted to 8-bit RGB explicitly.
* ``PyramidSlide`` — tiled or pyramidal TIFF / SVS / NDPI … through tiffslide (or OpenSlide),
  read region by region, so memory stays bounded however large the slide is.

Pixels outside the image are ``PAD_VALUE`` (255, white: empty glass on a brightfield slide).

Hub-bound remote code: imports only third-party packages (numpy, PIL; tifffile/tiffslide lazily).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Self

import numpy as np
from PIL import Image, ImageFile

PAD_VALUE = 255
"""Fill value for patch pixels that fall outside the image (white slide background)."""

CROP_CONVENTION = "floor-center-v1"
"""Name of the crop convention: centre = floor(pixel), window [c - size//2, c - size//2 + size)."""

DEFAULT_MAX_IMAGE_PIXELS = 500_000_000
"""Flat images larger than this (≈ 1.5 GB as RGB) are refused: use a pyramidal TIFF instead."""

MAX_PIXELS_ENV = "MCLSTEXP_MAX_IMAGE_PIXELS"

FLAT_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
PYRAMID_SUFFIXES = {".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".qptiff"}

_SLIDES_EXTRA = (
    "Reading pyramidal slides needs tiffslide (or openslide-python): "
    "pip install 'mclstexp-hub[slides]'"
)


def crop_window(cx: float, cy: float, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window around (cx, cy): ``floor(c) - size // 2``."""
    return int(np.floor(cx)) - size // 2, int(np.floor(cy)) - size // 2


def max_image_pixels() -> int:
    """The decode cap for flat images (``MCLSTEXP_MAX_IMAGE_PIXELS`` or the default)."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or raw == "":
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r} is not an integer number of pixels.") from None
    if value <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive number of pixels; got {value}.")
    return value


# ------------------------------------------------------------------------------ pixel modes
def to_rgb8(image: Image.Image | np.ndarray, where: str = "image") -> np.ndarray:
    """Any PIL image or array → (H, W, 3) uint8 RGB, converting explicitly; refuses the rest.

    16-bit data is scaled (x / 257), never clipped to white; float data must lie in [0, 1]
    (scaled by 255) or [0, 255]; alpha is composited over white (transparent = glass);
    palette, greyscale, CMYK and 1-bit images go through PIL's own conversion.
    """
    if isinstance(image, Image.Image):
        mode = image.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            array = np.asarray(image)
            return _rescale_integer(array, where)
        if mode == "F":
            return _rescale_float(np.asarray(image, dtype=np.float64), where)
        if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
            rgba = np.asarray(image.convert("RGBA"))
            return _over_white(rgba)
        if mode != "RGB":
            try:
                image = image.convert("RGB")
            except (ValueError, OSError) as exc:
                raise ValueError(
                    f"{where}: cannot convert PIL mode {mode!r} to RGB ({exc}); re-export the "
                    "image as 8-bit RGB."
                ) from exc
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"{where}: expected an image array (H, W), (H, W, 3) or (H, W, 4); got shape "
            f"{array.shape}."
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = _rescale_float(array.astype(np.float64), where)
    elif array.dtype != np.uint8:
        array = _rescale_integer(array, where)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = _over_white(array)
    return np.ascontiguousarray(array)


def _rescale_integer(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2)
    if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
        raise ValueError(
            f"{where}: integer pixel values in [{int(array.min())}, {int(array.max())}] are "
            "outside 0..65535; re-export the image as 8- or 16-bit RGB."
        )
    scaled = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)  # 65535 → 255
    return scaled if scaled.ndim == 3 else np.repeat(scaled[..., None], 3, axis=2)


def _rescale_float(array: np.ndarray, where: str) -> np.ndarray:
    if array.size and not np.isfinite(array).all():
        raise ValueError(f"{where}: float image contains NaN/inf pixels; re-export it.")
    low = float(array.min()) if array.size else 0.0
    high = float(array.max()) if array.size else 0.0
    if low < 0 or high > 255:
        raise ValueError(
            f"{where}: float pixel values in [{low:g}, {high:g}] are neither in [0, 1] nor in "
            "[0, 255]; re-export the image as 8-bit RGB."
        )
    factor = 255.0 if high <= 1.0 else 1.0
    out = np.clip(np.round(array * factor), 0, 255).astype(np.uint8)
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    if rgba.dtype != np.uint8:
        rgba = _rescale_integer(rgba, "image") if rgba.dtype.kind in "iu" else rgba
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + PAD_VALUE * (1.0 - alpha)
    return np.ascontiguousarray(np.round(rgb).astype(np.uint8))


# ------------------------------------------------------------------------------ slides
class Slide:
    """A full-resolution image that hands out square patches centred on spots."""

    path: Path | None = None
    width: int
    height: int
    mpp: float | None = None  # microns per pixel where the file records it

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of the window at (x0, y0); outside pixels = PAD_VALUE."""
        raise NotImplementedError

    def read_patch(self, center_x: float, center_y: float, size: int) -> np.ndarray:
        """(size, size, 3) uint8 patch centred on a full-resolution pixel position."""
        x0, y0 = crop_window(center_x, center_y, size)
        return self.read_region(x0, y0, size, size)

    def thumbnail(self, max_size: int) -> Image.Image:
        """An RGB PIL image whose longest side is at most ``max_size`` (a copy: each size is
        drawn once and kept, since a whole-image resize costs ~0.5 s and a prediction asks for
        the stored thumbnail after its spots; `predict` draws it ahead in a thread)."""
        kept = self.__dict__.setdefault("_thumbnails", {})
        if max_size not in kept:
            kept[max_size] = self._draw_thumbnail(max_size)
        return kept[max_size].copy()

    def _draw_thumbnail(self, max_size: int) -> Image.Image:
        raise NotImplementedError

    def contains(self, x: float, y: float) -> bool:
        return 0 <= x < self.width and 0 <= y < self.height

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "the slide image"

    def close(self) -> None:
        self.__dict__.pop("_thumbnails", None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.width}x{self.height})"


def _thumbnail_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


class ArraySlide(Slide):
    """A flat image held in memory as an RGB uint8 array."""

    def __init__(self, path: str | Path | None = None, array: np.ndarray | None = None):
        self.path = Path(path) if path is not None else None
        if array is None:
            if self.path is None:
                raise ValueError("ArraySlide needs a path or an array.")
            array = decode_flat_image(self.path)
        else:
            array = to_rgb8(array, self.name)
        self._array = array
        self.height, self.width = array.shape[:2]

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + w, self.width), min(y0 + h, self.height)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = self._array[sy0:sy1, sx0:sx1]
        return out

    def _draw_thumbnail(self, max_size: int) -> Image.Image:
        size = _thumbnail_size(self.width, self.height, max_size)
        return Image.fromarray(self._array).resize(  # box-reduce first: 0.6 s, not 1 s, on 92 Mpx
            size, Image.BILINEAR, reducing_gap=2.0)

    def close(self) -> None:
        self._array = np.zeros((0, 0, 3), dtype=np.uint8)
        super().close()


class PyramidSlide(Slide):
    """A tiled / pyramidal slide read region by region (tiffslide or OpenSlide)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._slide = _open_pyramid(self.path)
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        props = self._slide.properties
        mpp = props.get("tiffslide.mpp-x") or props.get("openslide.mpp-x")
        self.mpp = float(mpp) if mpp not in (None, "") else None

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + w, self.width), min(y0 + h, self.height)
        if sx1 <= sx0 or sy1 <= sy0:
            return out
        try:
            region = self._slide.read_region((sx0, sy0), 0, (sx1 - sx0, sy1 - sy0))
        except Exception as exc:  # tiffslide/openslide raise many error types
            raise ValueError(
                f"{self.path}: could not read region x={sx0}, y={sy0}, "
                f"{sx1 - sx0}x{sy1 - sy0} ({exc}); the slide file may be truncated or corrupt"
            ) from exc
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = to_rgb8(region, str(self.path))
        return out

    def _draw_thumbnail(self, max_size: int) -> Image.Image:
        size = _thumbnail_size(self.width, self.height, max_size)
        thumb = self._slide.get_thumbnail(size)
        return Image.fromarray(to_rgb8(thumb, str(self.path)))

    def close(self) -> None:
        self._slide.close()
        super().close()


class _DuckSlide(Slide):
    """Adapter for user objects with width, height, read_region(x0, y0, w, h), thumbnail()."""

    def __init__(self, obj: Any):
        self._obj = obj
        self.path = Path(obj.path) if getattr(obj, "path", None) else None
        self.width, self.height = int(obj.width), int(obj.height)
        self.mpp = getattr(obj, "mpp", None)

    def read_region(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        region = to_rgb8(self._obj.read_region(x0, y0, w, h), self.name)
        if region.shape != (h, w, 3):
            raise ValueError(f"{self.name}: read_region returned {region.shape}, not {(h, w, 3)}.")
        return region

    def _draw_thumbnail(self, max_size: int) -> Image.Image:
        thumb = self._obj.thumbnail(max_size)
        return Image.fromarray(to_rgb8(thumb, self.name))


# ------------------------------------------------------------------------------ decoding
def decode_flat_image(path: str | Path) -> np.ndarray:
    """Decode a JPEG/PNG/flat TIFF into RGB uint8, refusing oversized or truncated files.

    The pixel count is checked from the header, before any pixel data is decoded, so a tiny
    file that declares a huge canvas costs nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"image not found: {path}. Pass the full-resolution H&E image of this section."
        )
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the image file is empty (0 bytes); re-export or re-download it.")
    cap = max_image_pixels()
    old_limit, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    # PIL's own guard raised to our cap (it warns above it and refuses above twice it), so a
    # bound holds even before our header check below, which refuses anything above the cap.
    Image.MAX_IMAGE_PIXELS = cap
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated data must fail, not decode as black
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if int(img.width) * int(img.height) > cap:
                    raise _TooLarge(_too_large(path, f"{img.width}x{img.height}", cap))
                img.load()  # full decode: truncated files fail here, not mid-build
                array = to_rgb8(img, str(path))
    except _TooLarge as exc:
        raise ValueError(str(exc)) from None
    except Image.DecompressionBombError:  # PIL's guard (at twice the cap) fired first
        raise ValueError(_too_large(path, "its declared size", cap)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(
            f"{path}: cannot decode image ({exc}). The file is unreadable or truncated; "
            "re-download or re-export it."
        ) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
        ImageFile.LOAD_TRUNCATED_IMAGES = old_truncated
    return array


class _TooLarge(Exception):
    pass


def _too_large(path: Path, size: str, cap: int) -> str:
    return (
        f"{path}: {size} exceeds the flat-image decode limit of {cap:,} pixels. Convert it to "
        "a pyramidal TIFF (read region by region, e.g. `vips tiffsave in.jpg out.tif --tile "
        f"--pyramid`), or raise the limit with {MAX_PIXELS_ENV}=N."
    )


def _is_pyramidal_tiff(path: Path) -> bool:
    """True for tiled or multi-resolution TIFFs (read region by region, never whole)."""
    try:
        import tifffile
    except ImportError:
        return False  # no tifffile: treat as flat, PIL will decode it (under the cap)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.levels) > 1 or bool(tif.pages[0].is_tiled)
    except Exception as exc:  # tifffile raises many error types
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
    except ImportError:
        tiffslide = None
    if tiffslide is not None:
        try:
            return tiffslide.TiffSlide(path)
        except Exception as exc:  # tiffslide raises many error types
            raise ValueError(f"{path}: tiffslide cannot open this slide ({exc})") from exc
    try:
        import openslide
    except ImportError as exc:
        raise ImportError(f"{path}: {_SLIDES_EXTRA}") from exc
    try:
        return openslide.OpenSlide(str(path))
    except Exception as exc:  # openslide raises many error types
        raise ValueError(f"{path}: OpenSlide cannot open this slide ({exc})") from exc


def open_slide(source: Any) -> Slide:
    """A `Slide` from a path, a PIL image, an (H, W[, C]) array, or a slide-like object.

    Paths: JPEG/PNG/flat TIFF are decoded once (under the pixel cap); tiled or pyramidal TIFF and
    vendor formats (SVS, NDPI, …) are read region by region. Missing file → FileNotFoundError;
    corrupt, truncated or oversized file → ValueError naming the file.
    """
    if isinstance(source, Slide):
        return source
    if isinstance(source, Image.Image):
        return ArraySlide(array=to_rgb8(source, "the slide image"))
    if isinstance(source, np.ndarray):
        return ArraySlide(array=source)
    if hasattr(source, "read_region") and hasattr(source, "width") and hasattr(source, "height"):
        return _DuckSlide(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "the slide image must be a path, a PIL image, an (H, W, 3) uint8 array or an object "
            f"with width/height/read_region; got {type(source).__name__}."
        )
    path = Path(source)
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


__all__ = [
    "CROP_CONVENTION",
    "PAD_VALUE",
    "ArraySlide",
    "PyramidSlide",
    "Slide",
    "crop_window",
    "decode_flat_image",
    "max_image_pixels",
    "open_slide",
    "to_rgb8",
]
