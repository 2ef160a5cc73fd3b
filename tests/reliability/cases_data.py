"""Bad inputs to `mclstexp data build` (HER2+ layout, synthetic data)."""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .harness import Case


def _raw(work: Path, assets) -> Path:
    """A private copy of the raw HER2+-layout tree (safe to corrupt)."""
    target = work / "data"
    shutil.copytree(assets.data_dir, target)
    return target


def _build(data_dir: Path, out: Path, assets, *extra: str) -> list[str]:
    return ["data", "build", "her2st", "--data-dir", data_dir, "--out", out, "--sections",
            "A1", "B1", "--genes", assets.genes_file, "--patch-size", assets.patch_size,
            "--quiet", *extra]


def _counts(data: Path, section: str = "B1") -> Path:
    return data / "ST-cnts" / f"{section}.tsv.gz"


def _spots(data: Path, section: str = "B1") -> Path:
    return data / "ST-spotfiles" / f"{section}_selection.tsv"


def _image(data: Path, section: str = "B1") -> Path:
    return next((data / "ST-imgs" / section[0] / section).glob("*.jpg"))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header declares width × height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


def _replace_image(data: Path, make) -> Path:
    old = _image(data)
    new = old.with_suffix(".png")
    old.unlink()
    make(new)
    return new


# ------------------------------------------------------------------ critical: --overwrite
def _out_is_data(work, assets):
    data = _raw(work, assets)
    return _build(data, data, assets, "--overwrite")


def _out_is_parent(work, assets):
    data = _raw(work, assets)
    return _build(data, work, assets, "--overwrite")


def _out_foreign_folder(work, assets):
    data = _raw(work, assets)
    foreign = work / "my_thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("irreplaceable")
    return _build(data, foreign, assets, "--overwrite")


def _out_is_file(work, assets):
    data = _raw(work, assets)
    target = work / "notes.txt"
    target.write_text("keep me")
    return _build(data, target, assets, "--overwrite")


def _out_is_genes_file_parent(work, assets):
    data = _raw(work, assets)
    genes = work / "panel" / "genes.txt"
    genes.parent.mkdir()
    shutil.copy2(assets.genes_file, genes)
    args = _build(data, genes.parent, assets, "--overwrite")
    args[args.index("--genes") + 1] = genes
    return args


def _out_exists_no_overwrite(work, assets):
    data = _raw(work, assets)
    (work / "ds").mkdir()
    (work / "ds" / "x.txt").write_text("x")
    return _build(data, work / "ds", assets)


# ------------------------------------------------------------------ decoding
def _truncated_jpeg(work, assets):
    data = _raw(work, assets)
    image = _image(data)
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    return _build(data, work / "ds", assets)


def _empty_image(work, assets):
    data = _raw(work, assets)
    _image(data).write_bytes(b"")
    return _build(data, work / "ds", assets)


def _bomb_png(work, assets):
    data = _raw(work, assets)
    _replace_image(data, lambda p: _png_header_only(p, 100_000, 100_000))
    return _build(data, work / "ds", assets)


def _not_an_image(work, assets):
    data = _raw(work, assets)
    _image(data).write_bytes(b"this is not a JPEG at all" * 20)
    return _build(data, work / "ds", assets)


# ------------------------------------------------------------------ image modes (converted)
def _mode_case(mode: str):
    def make(work, assets):
        data = _raw(work, assets)
        rgb = np.asarray(Image.open(_image(data)).convert("RGB"))

        def write(path: Path) -> None:
            if mode == "I;16":
                grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint16) * 257
                Image.fromarray(grey).save(path)  # uint16 → mode I;16
            elif mode == "RGBA":
                alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
                Image.fromarray(np.concatenate([rgb, alpha], 2), mode="RGBA").save(path)
            elif mode == "P":
                Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(path)
            elif mode == "L":
                Image.fromarray(rgb).convert("L").save(path)
            else:
                raise AssertionError(mode)

        _replace_image(data, write)
        return _build(data, work / "ds", assets)

    return make


def _check_patches_not_constant(work: Path, assets) -> None:
    from mclstexp_hub.data.hf_dataset import load_st_dataset

    ds = load_st_dataset(work / "ds", sections=["B1"])
    patches = [np.asarray(ds[i]["image"].convert("RGB")) for i in range(0, len(ds), 5)]
    # 16-bit scaled, not clipped to white; palettes/greyscale converted: tissue is visible
    assert all(p.std() > 5 for p in patches)
    assert all(p.mean() < 250 for p in patches)


# ------------------------------------------------------------------ counts and spots
def _counts_empty(work, assets):
    data = _raw(work, assets)
    _counts(data).write_bytes(b"")
    return _build(data, work / "ds", assets)


def _counts_binary(work, assets):
    data = _raw(work, assets)
    _counts(data).write_bytes(bytes(range(256)) * 8)
    return _build(data, work / "ds", assets)


def _counts_not_integer(work, assets):
    data = _raw(work, assets)
    path = _counts(data)
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    header, first = lines[0], lines[1].split("\t")
    first[1:] = [f"{float(v) + 0.37:.2f}" for v in first[1:]]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([header, "\t".join(first), *lines[2:]]) + "\n")
    return _build(data, work / "ds", assets)


def _counts_negative(work, assets):
    data = _raw(work, assets)
    path = _counts(data)
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    first = lines[1].split("\t")
    first[1] = "-3"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join([lines[0], "\t".join(first), *lines[2:]]) + "\n")
    return _build(data, work / "ds", assets)


def _counts_missing(work, assets):
    data = _raw(work, assets)
    _counts(data).unlink()
    return _build(data, work / "ds", assets)


def _spots_empty(work, assets):
    data = _raw(work, assets)
    _spots(data).write_bytes(b"")
    return _build(data, work / "ds", assets)


def _spots_non_numeric_pixels(work, assets):
    data = _raw(work, assets)
    path = _spots(data)
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    col = header.index("pixel_x")
    row = lines[1].split("\t")
    row[col] = "twelve"
    path.write_text("\n".join([lines[0], "\t".join(row), *lines[2:]]) + "\n")
    return _build(data, work / "ds", assets)


def _spots_missing_column(work, assets):
    data = _raw(work, assets)
    path = _spots(data)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.replace("pixel_x", "px_x", 1) if i == 0 else line
                              for i, line in enumerate(lines)) + "\n")
    return _build(data, work / "ds", assets)


def _partial_join(work, assets):
    """Half of B1's spots have no counts row: the build would silently drop them."""
    data = _raw(work, assets)
    path = _counts(data)
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    keep = [lines[0], *lines[1 : 1 + (len(lines) - 1) // 2]]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(keep) + "\n")
    return _build(data, work / "ds", assets)


def _partial_join_allowed(work, assets):
    args = _partial_join(work, assets)
    return [*args, "--allow-dropped-spots"]


def _all_zero_expression(work, assets):
    data = _raw(work, assets)
    path = _counts(data)
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    zeroed = [lines[0]] + ["\t".join([line.split("\t")[0]] + ["0"] * (len(line.split("\t")) - 1))
                           for line in lines[1:]]
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(zeroed) + "\n")
    return _build(data, work / "ds", assets)


# ------------------------------------------------------------------ gene panel
def _panel_binary(work, assets):
    data = _raw(work, assets)
    panel = work / "panel.txt"
    panel.write_bytes(b"\x00\x01\x02\xff\xfe" * 50)
    args = _build(data, work / "ds", assets)
    args[args.index("--genes") + 1] = panel
    return args


def _panel_empty(work, assets):
    data = _raw(work, assets)
    panel = work / "panel.txt"
    panel.write_text("")
    args = _build(data, work / "ds", assets)
    args[args.index("--genes") + 1] = panel
    return args


def _panel_unknown_gene(work, assets):
    data = _raw(work, assets)
    panel = work / "panel.txt"
    panel.write_text("\n".join([*assets.genes[:5], "NOT_A_GENE_XYZ"]) + "\n")
    args = _build(data, work / "ds", assets)
    args[args.index("--genes") + 1] = panel
    return args


def _panel_missing(work, assets):
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    args[args.index("--genes") + 1] = work / "nope.txt"
    return args


# ------------------------------------------------------------------ options and folders
def _data_dir_missing(work, assets):
    return _build(work / "no_such_folder", work / "ds", assets)


def _unknown_section(work, assets):
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    i = args.index("--sections")
    args[i + 1 : i + 3] = ["A1", "Z9"]
    return args


def _patch_size_zero(work, assets):
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    args[args.index("--patch-size") + 1] = "0"
    return args


def _n_top_zero(work, assets):
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    i = args.index("--genes")
    del args[i : i + 2]  # the recipe path, where --n-top is used
    return [*args, "--n-top", "0"]


def _min_spots_zero_used(work, assets):
    """--min-spots 0 is a valid value and must be used (not replaced by the default 1000)."""
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    i = args.index("--genes")
    del args[i : i + 2]
    return [*args, "--min-spots", "0", "--n-top", "5"]


def _check_min_spots_zero(work: Path, assets) -> None:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata

    meta = load_dataset_metadata(work / "ds")
    assert len(meta["gene_names"]) >= 5  # with the default 1,000 no synthetic gene survives


def _target_mpp_zero(work, assets):
    data = _raw(work, assets)
    return [*_build(data, work / "ds", assets), "--target-mpp", "0"]


CASES = [
    Case("data-out-is-data-dir", "data", "overwrite",
         "`--out` = the raw data folder, with --overwrite", _out_is_data, ("is the input",)),
    Case("data-out-is-parent", "data", "overwrite",
         "`--out` = an ancestor of the data folder, with --overwrite", _out_is_parent,
         ("contains the input",)),
    Case("data-out-foreign-folder", "data", "overwrite",
         "`--out` = an existing folder not written by mclstexp, with --overwrite",
         _out_foreign_folder, ("my_thesis", "not a patch dataset written by mclstexp")),
    Case("data-out-foreign-file", "data", "overwrite",
         "`--out` = an existing unrelated file, with --overwrite", _out_is_file,
         ("notes.txt",)),
    Case("data-out-contains-gene-panel", "data", "overwrite",
         "`--out` = the folder holding the --genes file, with --overwrite",
         _out_is_genes_file_parent, ("contains the input",)),
    Case("data-out-exists", "data", "overwrite",
         "`--out` exists, no --overwrite", _out_exists_no_overwrite,
         ("already exists", "--overwrite")),
    Case("data-image-truncated", "data", "decode", "truncated JPEG", _truncated_jpeg,
         (".jpg", "truncated")),
    Case("data-image-empty", "data", "decode", "0-byte image", _empty_image, (".jpg", "empty")),
    Case("data-image-bomb", "data", "decode",
         "58-byte-header PNG declaring 100,000 × 100,000 px (run under a 3 GiB address-space limit)",
         _bomb_png, (".png", "decode limit", "pyramidal TIFF"), subprocess=True,
         address_space_gib=3.0),
    Case("data-image-not-image", "data", "decode", "text bytes named .jpg", _not_an_image,
         (".jpg", "cannot decode")),
    Case("data-image-16bit", "data", "modes", "16-bit greyscale PNG slide (I;16)",
         _mode_case("I;16"), code=0, leaves=("ds",),
         check=_check_patches_not_constant, verdict="converted correctly"),
    Case("data-image-rgba", "data", "modes", "RGBA PNG slide", _mode_case("RGBA"), code=0,
         leaves=("ds",), check=_check_patches_not_constant,
         verdict="converted correctly"),
    Case("data-image-palette", "data", "modes", "palette (P) PNG slide", _mode_case("P"),
         code=0, leaves=("ds",), check=_check_patches_not_constant,
         verdict="converted correctly"),
    Case("data-image-greyscale", "data", "modes", "greyscale (L) PNG slide", _mode_case("L"),
         code=0, leaves=("ds",), check=_check_patches_not_constant,
         verdict="converted correctly"),
    Case("data-counts-empty", "data", "messages", "0-byte counts file", _counts_empty,
         ("B1.tsv.gz",)),
    Case("data-counts-binary", "data", "messages", "binary counts file", _counts_binary,
         ("B1.tsv.gz",)),
    Case("data-counts-not-integer", "data", "counts", "non-integer raw counts",
         _counts_not_integer, ("B1", "integer")),
    Case("data-counts-negative", "data", "counts", "negative raw counts", _counts_negative,
         ("B1", "negative")),
    Case("data-counts-missing", "data", "messages", "counts file absent", _counts_missing,
         ("B1",)),
    Case("data-spots-empty", "data", "messages", "0-byte spot file", _spots_empty,
         ("B1_selection.tsv",)),
    Case("data-spots-non-numeric", "data", "messages", "non-numeric pixel_x in the spot file",
         _spots_non_numeric_pixels, ("B1_selection.tsv", "pixel_x")),
    Case("data-spots-missing-column", "data", "messages", "spot file without pixel_x",
         _spots_missing_column, ("B1_selection.tsv", "pixel_x")),
    Case("data-partial-join", "data", "counts",
         "half the spots have no counts row (partial join)", _partial_join,
         ("B1", "--allow-dropped-spots")),
    Case("data-partial-join-allowed", "data", "counts",
         "partial join with --allow-dropped-spots: built, drop recorded", _partial_join_allowed,
         code=0, leaves=("ds",), verdict="used as given"),
    Case("data-all-zero", "data", "counts", "a section whose counts are all zero",
         _all_zero_expression, ("B1", "zero")),
    Case("data-panel-binary", "data", "messages", "binary gene panel", _panel_binary,
         ("panel.txt",)),
    Case("data-panel-empty", "data", "messages", "empty gene panel", _panel_empty,
         ("panel.txt",)),
    Case("data-panel-unknown-gene", "data", "messages", "panel gene absent from the data",
         _panel_unknown_gene, ("NOT_A_GENE_XYZ",)),
    Case("data-panel-missing", "data", "messages", "--genes file absent", _panel_missing,
         ("nope.txt",)),
    Case("data-dir-missing", "data", "messages", "--data-dir absent", _data_dir_missing,
         ("no_such_folder",)),
    Case("data-unknown-section", "data", "messages", "--sections names an absent section",
         _unknown_section, ("Z9",)),
    Case("data-patch-size-zero", "data", "zero", "--patch-size 0", _patch_size_zero,
         ("patch", "0")),
    Case("data-n-top-zero", "data", "zero", "--n-top 0 (recipe)", _n_top_zero, ("n-top",)),
    Case("data-min-spots-zero", "data", "zero", "--min-spots 0 is used, not replaced by 1,000",
         _min_spots_zero_used, code=0, leaves=("ds",),
         check=_check_min_spots_zero, verdict="used as given"),
    Case("data-target-mpp-zero", "data", "zero", "--target-mpp 0", _target_mpp_zero,
         ("target-mpp",)),
]
