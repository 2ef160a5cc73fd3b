"""Hub-ready patch datasets: parquet shards with ``datasets`` features, a card, and a loader.

Layout of a built dataset (one folder, uploadable as a Hub dataset repo as is)::

    README.md                       dataset card; YAML ``configs:`` block, one config per dataset
    mclstexp_dataset.json           gene_names, transform, units, sections, patients, patch size …
    genes.txt                       the panel, one gene per line, in expression-vector order
    data/{config}/{section}.parquet one shard per section (row groups of ``rows_per_group``)

Features: ``image`` Image() (PNG, lossless, so pixels round-trip exactly), ``expression``
List(float32, length=G), ``position`` List(int32, 2) = (array_x, array_y), ``pixel_center``
List(float32, 2) = full-resolution (x, y), and strings ``section patient spot_id label``.

Building writes into a temporary sibling folder and renames it into place at the end, so a
failure leaves nothing half-written behind.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image as PILImage

from ..outputs import check_output, is_dataset_folder, replace_folder, staging
from .errors import DataError, preview
from .patches import iter_patches, window_size
from ..models.mclstexp.slide_io_mclstexp import CROP_CONVENTION, PAD_VALUE, open_slide

METADATA_FILE = "mclstexp_dataset.json"
GENES_FILE = "genes.txt"
FORMAT_VERSION = 2
"""2: patches cut with `CROP_CONVENTION` (floor centres, the reference's crop); 1: rounded."""


def patch_features(n_genes: int):
    """The ``datasets.Features`` of a patch dataset with ``n_genes`` expression values."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "expression": List(Value("float32"), length=n_genes),
            "position": List(Value("int32"), length=2),
            "pixel_center": List(Value("float32"), length=2),
            "section": Value("string"),
            "patient": Value("string"),
            "spot_id": Value("string"),
            "label": Value("string"),
        }
    )


def shard_name(section: str) -> str:
    """A file-system-safe shard stem for a section name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", section)


def _png(patch: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(patch).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _fixed_list(values: np.ndarray, type_: pa.DataType) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), type=type_), values.shape[1])


def _check_section(adata: ad.AnnData, genes: list[str]) -> str:
    sections = adata.obs["section"].astype(str).unique() if "section" in adata.obs else []
    if len(sections) != 1:
        raise DataError(
            f"each AnnData must hold exactly one section (obs['section']), got {list(sections)}"
        )
    section = str(sections[0])
    if adata.n_obs == 0:
        raise DataError(f"section {section}: no spots left; nothing to write")
    if list(adata.var_names) != genes:
        raise DataError(
            f"section {section}: its genes differ from the first section's; run "
            "preprocess_sections on all sections together so they share one panel"
        )
    if "mclstexp_preprocessing" not in adata.uns:
        raise DataError(
            f"section {section}: uns['mclstexp_preprocessing'] missing; X must be transformed "
            "panel expression from mclstexp_hub.data.preprocess.preprocess_sections"
        )
    return section


def _write_shard(
    adata: ad.AnnData,
    path: Path,
    schema: pa.Schema,
    patch_size: int,
    target_mpp: float | None,
    rows_per_group: int,
    progress: Any = None,
) -> None:
    X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise DataError(f"section {adata.obs['section'].iloc[0]}: expression has NaN/inf values")
    obs = adata.obs
    position = obs[["array_x", "array_y"]].to_numpy(dtype=np.int32)
    centre = np.asarray(adata.obsm["spatial"], dtype=np.float32)[:, :2]
    strings = {c: obs[c].astype(str).to_numpy() for c in ("section", "patient", "spot_id")}
    strings["label"] = obs["label"].fillna("").astype(str).to_numpy()
    # PNG encoding dominates the build and PIL releases the GIL while encoding, so one row group
    # of patches is encoded by a small thread pool; at most one row group is held in memory.
    workers = max(1, min(4, os.cpu_count() or 1))
    with pq.ParquetWriter(path, schema) as writer, ThreadPoolExecutor(workers) as pool:
        batch: list[np.ndarray] = []
        start = 0

        def flush() -> None:
            nonlocal start, batch
            images = list(pool.map(_png, batch))
            _flush(writer, schema, images, start, X, position, centre, strings)
            if progress is not None:
                progress.update(len(batch))
            start += len(batch)
            batch = []

        for patch in iter_patches(adata, None, patch_size, target_mpp):
            batch.append(patch)
            if len(batch) == rows_per_group:
                flush()
        if batch:
            flush()


def _flush(writer, schema, images, start, X, position, centre, strings) -> None:
    stop = start + len(images)
    columns = {
        "image": pa.StructArray.from_arrays(
            [pa.array(images, type=pa.binary()), pa.nulls(len(images), type=pa.string())],
            names=["bytes", "path"],
        ),
        "expression": _fixed_list(X[start:stop], pa.float32()),
        "position": _fixed_list(position[start:stop], pa.int32()),
        "pixel_center": _fixed_list(centre[start:stop], pa.float32()),
        **{k: pa.array(v[start:stop].tolist(), type=pa.string()) for k, v in strings.items()},
    }
    writer.write_table(pa.table([columns[f.name] for f in schema], schema=schema))


def _card(meta: dict[str, Any]) -> str:
    """Dataset card: YAML front matter with the ``configs:`` block, then a readable summary."""
    cfg = meta["config_name"]
    sections = ", ".join(meta["sections"])
    mpp = meta["target_mpp"]
    scale = (
        f"resampled to {mpp} µm/pixel (PIL Lanczos) from each section's full-resolution image"
        if mpp
        else "cut at full resolution, no resampling"
    )
    return f"""---
license: other
pretty_name: {meta["dataset_name"]} (mclSTExp patch dataset)
tags:
- spatial-transcriptomics
- histology
- mclstexp
configs:
- config_name: {cfg}
  data_files:
  - split: train
    path: data/{cfg}/*.parquet
  default: true
---

# {meta["dataset_name"]} — H&E patches with spatial gene expression

Built with `mclstexp-hub` for mclSTExp (Min et al., Briefings in Bioinformatics 2024).
One row per spot: a {meta["patch_size"]} × {meta["patch_size"]} px H&E patch centred on the
spot, the spot's expression over {len(meta["gene_names"])} genes, and its position.

## Source

{meta["source"]}

Sections ({len(meta["sections"])}): {sections}. Spots: {sum(meta["n_spots"].values())}.

## Licence terms of the source

{meta["license"]}

## Preprocessing

- Gene panel: {meta["gene_panel_source"]} ({len(meta["gene_names"])} genes; order in
  `genes.txt` = order of `expression`).
- Expression transform: `{meta["transform"]}` — **units: {meta["units"]}**, the total taken over
  the panel's genes only; spots with a panel total of 0 are all-zero rows.
- Patches: {scale}; pixels beyond the image border are padded with {meta["pad_value"]}
  (white background); stored as PNG (lossless).

## Fields

| field | type | meaning |
|---|---|---|
| `image` | Image (PNG) | H&E patch, RGB uint8 |
| `expression` | float32[{len(meta["gene_names"])}] | transformed expression ({meta["units"]}) |
| `position` | int32[2] | array grid (x, y), used for position embeddings |
| `pixel_center` | float32[2] | spot centre (x, y) in full-resolution image pixels |
| `section`, `patient`, `spot_id`, `label` | string | identifiers; `label` is the pathologist's region or "" |

## Loading

```python
from mclstexp_hub.data.hf_dataset import load_st_dataset
ds = load_st_dataset("<this repo or folder>", config="{cfg}")
# or: datasets.load_dataset("<this repo or folder>", "{cfg}", split="train")
```

`{METADATA_FILE}` holds the gene names, transform, units and per-section details.
"""


def build_patch_dataset(
    adatas: Sequence[ad.AnnData],
    out_dir: str | Path,
    dataset_name: str,
    patch_size: int = 224,
    *,
    target_mpp: float | None = None,
    source: str | None = None,
    license: str | None = None,
    overwrite: bool = False,
    rows_per_group: int = 64,
    progress: bool = False,
    inputs: Sequence[str | Path] = (),
) -> Path:
    """Write preprocessed sections as a Hub-ready patch dataset at ``out_dir``; return it.

    ``adatas`` come from ``preprocess_sections`` (X = transformed panel expression) and must
    record their image path (readers do). ``dataset_name`` becomes the config name.
    ``--overwrite`` replaces only a dataset folder this tool wrote, and ``out_dir`` may never be
    or contain an input (``inputs`` plus every section's image).
    """
    if not adatas:
        raise DataError("no sections to write")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", dataset_name):
        raise DataError(
            f"dataset name (--name) {dataset_name!r}: use only letters, digits, '_', '-', '.' "
            "and start with a letter or digit (it becomes the config and folder name)"
        )
    images = [
        a.uns.get("spatial", {}).get(str(a.obs["section"].iloc[0]), {}).get("metadata", {})
        .get("image_path") for a in adatas if a.n_obs
    ]
    out_dir = check_output(out_dir, overwrite=overwrite, inputs=[*inputs, *images],
                           is_ours=is_dataset_folder, what="patch dataset")
    genes = [str(g) for g in adatas[0].var_names]
    sections = [_check_section(a, genes) for a in adatas]
    dup = {s for s in sections if sections.count(s) > 1}
    if dup:
        raise DataError(f"section(s) {sorted(dup)} given more than once")
    prep = adatas[0].uns["mclstexp_preprocessing"]
    for a, s in zip(adatas, sections, strict=True):
        if a.uns["mclstexp_preprocessing"]["transform"] != prep["transform"]:
            raise DataError(f"section {s}: transform differs from {sections[0]}'s")
    schema = patch_features(len(genes)).arrow_schema
    bar = None
    with staging(out_dir.parent, f".{out_dir.name}.partial-") as tmp:
        try:
            shard_dir = tmp / "data" / dataset_name
            shard_dir.mkdir(parents=True)
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=sum(a.n_obs for a in adatas), unit="spot", desc=dataset_name)
            shards, per_section = {}, {}
            for a, section in zip(adatas, sections, strict=True):
                if bar is not None:
                    bar.set_postfix_str(section)
                rel = f"data/{dataset_name}/{shard_name(section)}.parquet"
                if rel in shards.values():
                    raise DataError(
                        f"section {section}: its shard name collides with another section's"
                    )
                md = a.uns["spatial"][section]["metadata"]
                src_mpp = md.get("microns_per_pixel")
                if target_mpp is not None and not src_mpp:
                    with open_slide(md["image_path"]) as slide:
                        src_mpp = slide.mpp
                _write_shard(a, tmp / rel, schema, patch_size, target_mpp, rows_per_group, bar)
                shards[section] = rel
                per_section[section] = {
                    "patient": str(a.obs["patient"].iloc[0]),
                    "n_spots": int(a.n_obs),
                    "image": Path(md["image_path"]).name if md.get("image_path") else None,
                    "source_mpp": src_mpp,
                    "source_mpp_note": md.get("microns_per_pixel_source"),
                    "window_px": window_size(patch_size, target_mpp, src_mpp)
                    if target_mpp is not None
                    else patch_size,
                    "missing_genes_filled": list(
                        a.uns["mclstexp_preprocessing"].get("missing_genes_filled", [])
                    ),
                    "zero_total_spots": list(
                        a.uns["mclstexp_preprocessing"].get("zero_total_spots", [])
                    ),
                    "dropped_spots": md.get("dropped_spots"),
                    # the source's own per-sample fields (e.g. HEST: technology, organ, mpp)
                    "source_metadata": md.get("source_metadata"),
                }
            meta = {
                "format_version": FORMAT_VERSION,
                "dataset_name": dataset_name,
                "config_name": dataset_name,
                "gene_names": genes,
                "transform": prep["transform"],
                "units": prep["units"],
                "gene_panel_source": prep.get("gene_panel_source"),
                "sections": sections,
                "patients": {s: per_section[s]["patient"] for s in sections},
                "n_spots": {s: per_section[s]["n_spots"] for s in sections},
                "shards": shards,
                "per_section": per_section,
                "patch_size": patch_size,
                "target_mpp": target_mpp,
                "mpp": target_mpp,
                "resampling": "PIL Lanczos" if target_mpp is not None else None,
                "pad_value": PAD_VALUE,
                "crop_convention": CROP_CONVENTION,
                "image_encoding": "PNG (lossless)",
                "source": source
                or str(adatas[0].uns["spatial"][sections[0]]["metadata"].get("source")),
                "license": license or "Unknown — set the source's licence terms (--license).",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            (tmp / GENES_FILE).write_text("\n".join(genes) + "\n")
            (tmp / "README.md").write_text(_card(meta), encoding="utf-8")
            replace_folder(tmp, out_dir)  # overwrite: swap in, then drop the old copy
        finally:
            if bar is not None:
                bar.close()
    return out_dir


def resolve_dataset_dir(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """A local folder as is, else a Hub dataset repo via ``snapshot_download`` (uses the cache,
    so it works offline once downloaded; ``local_files_only=True`` never touches the network)."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise FileNotFoundError(
            f"dataset folder not found: {text}; pass a folder written by `mclstexp data build` "
            "or a Hub dataset repo id 'org/name'"
        )
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            text,
            repo_type="dataset",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
    )


_REQUIRED_META = ("gene_names", "sections", "shards", "n_spots", "config_name", "transform")


def load_dataset_metadata(
    path_or_repo_id: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """The dataset's ``mclstexp_dataset.json`` (genes, transform, units, sections …), checked.

    Refused with a DataError naming the file: invalid JSON, missing fields, shard paths that
    are absolute or leave the folder, sections without a shard, and datasets cut with another
    crop convention than `CROP_CONVENTION` (they would train on pixels 1 px off the reference).
    """
    root = resolve_dataset_dir(path_or_repo_id, revision, cache_dir, local_files_only)
    path = root / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not an mclstexp patch dataset (build one with "
            "`mclstexp data build`)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc}); rebuild the dataset with `mclstexp data build`"
        ) from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object; rebuild with `mclstexp data build`")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise DataError(
            f"{path}: missing field(s) {missing}; rebuild the dataset with `mclstexp data build`"
        )
    if meta.get("crop_convention") != CROP_CONVENTION:
        raise DataError(
            f"{path}: built with crop convention {meta.get('crop_convention') or 'rounded centres (format 1)'!r}, "
            f"not {CROP_CONVENTION!r} (centre = floor(pixel), as the authors' code): its patches "
            "are 1 px off the reference for most spots. Rebuild it: `mclstexp data build ... "
            "--out <same folder> --overwrite`"
        )
    shards = meta["shards"]
    if not isinstance(shards, dict) or not isinstance(meta["sections"], list):
        raise DataError(f"{path}: 'shards' must map section → file and 'sections' be a list")
    resolved_root = root.resolve()
    for section in meta["sections"]:
        if section not in shards:
            raise DataError(f"{path}: section {section!r} has no entry in 'shards'")
    for section, rel in shards.items():
        rel_path = Path(str(rel))
        target = (root / rel_path).resolve()
        if rel_path.is_absolute() or ".." in rel_path.parts or not target.is_relative_to(
            resolved_root
        ):
            raise DataError(
                f"{path}: shard path {rel!r} of section {section!r} is absolute or leaves the "
                "dataset folder; shard paths must be relative paths inside it"
            )
    return meta


def _content_fingerprint(files: Sequence[Path]) -> str:
    """SHA-256 over the shards' bytes: the identity of what a load returns."""
    import hashlib

    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_checked_shards(root: Path, meta: dict[str, Any], sections: Sequence[str], schema):
    """Arrow table of the shards of ``sections``, each verified against the metadata."""
    tables = []
    for section in sections:
        shard = root / meta["shards"][section]
        if not shard.is_file():
            raise DataError(
                f"{shard}: shard of section {section!r} is missing; re-download or rebuild "
                "the dataset"
            )
        try:
            table = pq.read_table(shard)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{shard}: not a readable parquet shard ({exc}); re-download or rebuild the "
                "dataset"
            ) from None
        expected = meta["n_spots"].get(section) if isinstance(meta["n_spots"], dict) else None
        if expected is not None and table.num_rows != int(expected):
            raise DataError(
                f"{shard}: {table.num_rows} rows but the metadata says {expected} spots for "
                f"section {section!r}; the folder was modified — rebuild it"
            )
        if "section" in table.column_names:
            found = set(table.column("section").to_pylist())
            if found != {section}:
                raise DataError(
                    f"{shard}: holds section(s) {sorted(found)} but the metadata maps it to "
                    f"{section!r}; the folder was modified — rebuild it"
                )
        try:
            tables.append(table.select(schema.names).cast(schema))
        except (pa.ArrowException, KeyError) as exc:
            raise DataError(
                f"{shard}: columns do not match the dataset features ({exc}); rebuild it"
            ) from None
    return pa.concat_tables(tables)


def load_st_dataset(
    path_or_repo_id: str | Path,
    config: str | None = None,
    split: str = "train",
    streaming: bool = False,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    sections: Sequence[str] | None = None,
    local_files_only: bool = False,
):
    """Load a patch dataset from a folder or the Hub as ``datasets.Dataset`` (or
    ``IterableDataset`` with ``streaming=True``), optionally only some ``sections``.

    The shards are read directly and checked against the metadata (rows per section, section
    names), and the dataset's fingerprint is the SHA-256 of their bytes. `datasets`' own folder
    loader keys its cache on the folder *name*, so two folders called alike, or one rebuilt in
    place, would return stale rows; this loader cannot. ``cache_dir`` only matters for Hub
    downloads.
    """
    import datasets
    from datasets.table import InMemoryTable

    root = resolve_dataset_dir(path_or_repo_id, revision, cache_dir, local_files_only)
    meta = load_dataset_metadata(root)
    config = config or meta["config_name"]
    if config != meta["config_name"]:
        raise DataError(f"{root}: config {config!r} not found; it has {meta['config_name']!r}")
    if split != "train":
        raise DataError(f"{root}: split {split!r} not found; patch datasets have one split 'train'")
    features = patch_features(len(meta["gene_names"]))
    if sections:
        unknown = [s for s in sections if s not in meta["shards"]]
        if unknown:
            raise DataError(f"{root}: section(s) {preview(unknown)} not in {meta['sections']}")
        chosen = list(dict.fromkeys(sections))
    else:
        chosen = list(meta["sections"])
    files = [root / meta["shards"][s] for s in chosen]
    if streaming:
        for section, shard in zip(chosen, files, strict=True):
            if not shard.is_file():
                raise DataError(f"{shard}: shard of section {section!r} is missing; rebuild")
        return datasets.load_dataset(
            "parquet",
            data_files={split: [str(f) for f in files]},
            split=split,
            streaming=True,
            features=features,
        )
    table = _read_checked_shards(root, meta, chosen, features.arrow_schema)
    return datasets.Dataset(
        InMemoryTable(table),
        info=datasets.DatasetInfo(features=features, config_name=config),
        split=datasets.Split.TRAIN,
        fingerprint=_content_fingerprint(files)[:32],
    )


def push_st_dataset(
    out_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload mclstexp patch dataset",
):
    """Upload a built dataset folder to a Hub dataset repo exactly as written (shards, card,
    metadata), so ``load_st_dataset(repo_id)`` returns the same rows."""
    from huggingface_hub import CommitOperationAdd, HfApi

    out_dir = Path(out_dir)
    load_dataset_metadata(out_dir)  # fails early on a folder that is not a built dataset
    files = sorted(
        p
        for p in out_dir.rglob("*")
        if p.is_file() and not p.relative_to(out_dir).parts[0].startswith(".")
    )
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(out_dir).as_posix(), path_or_fileobj=str(p))
        for p in files
    ]
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    # one commit with exactly the built files: shards, card, metadata and gene list together
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message,
        repo_type="dataset",
        revision=revision,
    )
