"""Bad inputs to `mclstexp data build` (HER2+ layout, synthetic data)."""

from __future__ import annotations

import gzip
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
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


def _check_drop_recorded(work: Path, assets) -> None:
    from mclstexp_hub.data.hf_dataset import load_dataset_metadata, load_st_dataset

    meta = load_dataset_metadata(work / "ds")
    drop = meta["per_section"]["B1"]["dropped_spots"]
    assert drop["spots_without_counts"] > 0 and drop["counts_without_spot"] == 0
    assert meta["per_section"]["A1"]["dropped_spots"]["spots_without_counts"] == 0
    assert load_st_dataset(work / "ds", sections=["B1"]).num_rows == meta["n_spots"]["B1"]


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
         code=0, leaves=("ds",), check=_check_drop_recorded, verdict="used as given"),
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


# ------------------------------------------------------------------ added: more data cases
def _fixtures():
    """tests/data_fixtures.py (on sys.path as `data_fixtures` under pytest's rootdir insertion)."""
    try:
        import data_fixtures
    except ImportError:  # run from the repository root as a package
        from tests import data_fixtures
    return data_fixtures


def _panel(work: Path) -> Path:
    panel = work / "fixture_genes.txt"
    panel.write_text("\n".join(_fixtures().GENES) + "\n")
    return panel


def _visium(work: Path) -> dict:
    return _fixtures().write_visium_outs(work / "S7")


def _visium_build(f: dict, work: Path) -> list[str]:
    return ["data", "build", "visium", "--data-dir", f["outs"], "--image", f["image"], "--out",
            work / "ds", "--genes", _panel(work), "--patch-size", "32", "--quiet"]


def _visium_ok(work, assets):
    return _visium_build(_visium(work), work)


def _visium_non_integer(work, assets):
    import h5py

    f = _visium(work)
    with h5py.File(f["outs"] / "filtered_feature_bc_matrix.h5", "r+") as handle:
        data = handle["matrix/data"][:].astype(np.float32) + 0.5
        del handle["matrix/data"]
        handle["matrix"].create_dataset("data", data=data)
    return _visium_build(f, work)


def _visium_no_positions(work, assets):
    f = _visium(work)
    (f["outs"] / "spatial" / "tissue_positions.csv").unlink()
    return _visium_build(f, work)


def _visium_corrupt_h5(work, assets):
    f = _visium(work)
    h5 = f["outs"] / "filtered_feature_bc_matrix.h5"
    h5.write_bytes(h5.read_bytes()[:200])
    return _visium_build(f, work)


def _visium_spots_outside(work, assets):
    f = _visium(work)
    path = f["outs"] / "spatial" / "tissue_positions.csv"
    table = pd.read_csv(path)
    table.loc[table["in_tissue"] == 1, "pxl_col_in_fullres"] += 5000.0  # beyond the 700 px width
    table.to_csv(path, index=False)
    return _visium_build(f, work)


def _visium_mismatched_barcodes(work, assets):
    f = _visium(work)
    path = f["outs"] / "spatial" / "tissue_positions.csv"
    table = pd.read_csv(path)
    table.loc[:3, "barcode"] = [f"GGGGGG{i:04d}-1" for i in range(4)]  # 4 not in the matrix
    table.to_csv(path, index=False)
    return _visium_build(f, work)


def _visium_positions_non_numeric(work, assets):
    f = _visium(work)
    path = f["outs"] / "spatial" / "tissue_positions.csv"
    lines = path.read_text().splitlines()
    row = lines[1].split(",")
    row[-1] = "n/a"  # pxl_col_in_fullres
    path.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    return _visium_build(f, work)


def _h5ad(work: Path, *, fractional: bool) -> list[str]:
    import anndata as ad

    fx = _fixtures()
    ax, _ay, px, py = fx.grid_spots()
    counts = fx.counts_for(len(ax)).astype(np.float32)
    if fractional:
        counts = counts * 0.37  # normalised-looking values, not raw counts
    adata = ad.AnnData(X=counts, obs=pd.DataFrame(index=[f"s{i}" for i in range(len(ax))]),
                       var=pd.DataFrame(index=fx.GENES))
    adata.obsm["spatial"] = np.stack([px, py], axis=1)
    path = work / "sample.h5ad"
    adata.write_h5ad(path)
    image = work / "sample_HE.png"
    Image.fromarray(fx.tissue_image(700, 600)).save(image)
    return ["data", "build", "h5ad", "--data-dir", path, "--image", image, "--out", work / "ds",
            "--genes", _panel(work), "--patch-size", "32", "--quiet"]


def _h5ad_non_integer(work, assets):
    return _h5ad(work, fractional=True)


def _h5ad_image_missing(work, assets):
    args = _h5ad(work, fractional=False)
    args[args.index("--image") + 1] = work / "no_such_slide.png"
    return args


def _cscc_no_image(work, assets):
    _fixtures().write_st_section(work / "cscc", image=False)
    return ["data", "build", "cscc", "--data-dir", work / "cscc", "--out", work / "ds",
            "--sections", "P2_ST_rep1", "--genes", _panel(work), "--patch-size", "32", "--quiet"]


def _sections_twice(work, assets):
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    i = args.index("--sections")
    args[i + 1 : i + 3] = ["B1", "B1"]
    return args


def _name_with_slash(work, assets):
    return [*_build(_raw(work, assets), work / "ds", assets), "--name", "my/data"]


def _data_dir_is_file(work, assets):
    target = work / "data.tsv"
    target.write_text("not a folder\n")
    return _build(target, work / "ds", assets)


def _spots_none_selected(work, assets):
    data = _raw(work, assets)
    path = _spots(data)
    table = pd.read_csv(path, sep="\t")
    table["selected"] = 0
    table.to_csv(path, sep="\t", index=False)
    return _build(data, work / "ds", assets)


def _spots_orphan_counts(work, assets):
    """Half of B1's counts rows have no spot in the spot file (the other direction of a drop)."""
    data = _raw(work, assets)
    path = _spots(data)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[: 1 + (len(lines) - 1) // 2]) + "\n")
    return _build(data, work / "ds", assets)


def _panel_duplicate(work, assets):
    data = _raw(work, assets)
    panel = work / "panel.txt"
    panel.write_text("\n".join([*assets.genes[:4], assets.genes[1]]) + "\n")
    args = _build(data, work / "ds", assets)
    args[args.index("--genes") + 1] = panel
    return args


class _Payload:
    """Unpickling this would create `pwned` in the work folder (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _panel_npy_pickle(work, assets):
    import pickle

    data = _raw(work, assets)
    panel = work / "panel.npy"
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    with open(panel, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        pickle.dump(_Payload(work / "pwned"), handle, protocol=2)
    args = _build(data, work / "ds", assets)
    args[args.index("--genes") + 1] = panel
    return args


def _source_mpp_zero(work, assets):
    return [*_build(_raw(work, assets), work / "ds", assets), "--source-mpp", "0"]


def _min_spots_negative(work, assets):
    data = _raw(work, assets)
    args = _build(data, work / "ds", assets)
    i = args.index("--genes")
    del args[i : i + 2]
    return [*args, "--min-spots", "-1"]


def _counts_truncated_gzip(work, assets):
    data = _raw(work, assets)
    path = _counts(data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _build(data, work / "ds", assets)


CASES += [
    Case("data-visium-ok", "data", "counts", "a valid Visium outs/ + image builds (control)",
         _visium_ok, code=0, leaves=("ds",), verdict="used as given"),
    Case("data-visium-non-integer", "data", "counts", "Visium matrix with fractional counts",
         _visium_non_integer, ("filtered_feature_bc_matrix.h5", "non-integer")),
    Case("data-visium-no-positions", "data", "messages", "Visium outs/ without tissue positions",
         _visium_no_positions, ("tissue positions", "tissue_positions.csv")),
    Case("data-visium-corrupt-h5", "data", "decode", "truncated filtered_feature_bc_matrix.h5",
         _visium_corrupt_h5, ("filtered_feature_bc_matrix.h5",)),
    Case("data-visium-spots-outside", "data", "messages",
         "Visium spot centres outside the full-resolution image", _visium_spots_outside,
         ("fullres.png", "outside")),
    Case("data-visium-mismatched-barcodes", "data", "counts",
         "positions barcodes that are not in the matrix (partial join)",
         _visium_mismatched_barcodes, ("S7", "tissue_positions.csv", "--allow-dropped-spots")),
    Case("data-visium-positions-non-numeric", "data", "messages",
         "tissue_positions.csv with a non-numeric pixel column", _visium_positions_non_numeric,
         ("tissue_positions.csv", "pxl_col_in_fullres")),
    Case("data-h5ad-non-integer", "data", "counts", "h5ad whose X holds normalised values",
         _h5ad_non_integer, ("sample.h5ad", "non-integer")),
    Case("data-h5ad-image-missing", "data", "messages", "h5ad build whose --image is absent",
         _h5ad_image_missing, ("no_such_slide.png", "--image")),
    Case("data-cscc-no-image", "data", "messages", "cSCC section requested without its .jpg",
         _cscc_no_image, ("P2_ST_rep1", "image")),
    Case("data-sections-twice", "data", "messages", "--sections B1 B1", _sections_twice,
         ("--sections", "B1", "more than once")),
    Case("data-name-slash", "data", "paths", "--name with a slash", _name_with_slash,
         ("--name", "my/data")),
    Case("data-dir-is-file", "data", "paths", "--data-dir names a file", _data_dir_is_file,
         ("data.tsv", "not a folder")),
    Case("data-spots-none-selected", "data", "counts", "spot file whose rows are all selected=0",
         _spots_none_selected, ("B1_selection.tsv", "selected")),
    Case("data-spots-orphan-counts", "data", "counts",
         "counts rows with no spot in the spot file (partial join)", _spots_orphan_counts,
         ("B1", "counts row(s) have no spot", "--allow-dropped-spots")),
    Case("data-panel-duplicate", "data", "messages", "gene panel listing a gene twice",
         _panel_duplicate, ("panel.txt", "duplicate")),
    Case("data-panel-npy-pickle", "data", "decode",
         ".npy gene panel carrying a pickle payload (must never run)", _panel_npy_pickle,
         ("panel.npy", "refused")),
    Case("data-source-mpp-zero", "data", "zero", "--source-mpp 0", _source_mpp_zero,
         ("--source-mpp",)),
    Case("data-min-spots-negative", "data", "zero", "--min-spots -1", _min_spots_negative,
         ("--min-spots",)),
    Case("data-counts-truncated-gzip", "data", "decode", "counts .tsv.gz cut in half",
         _counts_truncated_gzip, ("B1.tsv.gz",)),
]
