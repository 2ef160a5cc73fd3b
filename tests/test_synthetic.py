"""Synthetic slides: HER2+ layout read by the real reader, expression driven by the image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mclstexp_hub.synthetic import (
    FEATURES,
    SYNTHETIC_NOTE,
    TISSUE_TYPES,
    generate_synthetic_dataset,
    make_gene_programme,
    render_synthetic_slide,
    simulate_counts,
    spot_features,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "synthetic"
    return generate_synthetic_dataset(root, sections=("A1", "B1"), n_rows=8, n_cols=8, seed=3)


def test_written_in_her2st_layout_and_read_by_the_real_reader(dataset):
    from mclstexp_hub.data.preprocess import preprocess_sections, read_gene_panel
    from mclstexp_hub.data.readers.her2st import list_her2st_sections, read_her2st

    assert "SYNTHETIC DATA" in (dataset.root / "README.md").read_text()
    assert list_her2st_sections(dataset.data_dir, with_images_only=True) == ["A1", "B1"]
    genes = read_gene_panel(dataset.genes_file)
    assert genes == dataset.gene_names and 30 <= len(genes) <= 60
    sections = read_her2st(dataset.data_dir)
    for section, adata in zip(("A1", "B1"), sections, strict=True):
        assert adata.n_obs == dataset.n_spots[section] > 20
        assert set(adata.obs["label"]) <= set(TISSUE_TYPES) | {"undetermined"}
        assert adata.uns["spatial"][section]["metadata"]["image_path"] == str(
            dataset.image_path(section))
        raw = adata.X.toarray()
        assert np.array_equal(raw, np.round(raw)) and (raw.sum(axis=1) > 0).all()
    processed = preprocess_sections(sections, genes)
    assert all(np.isfinite(p.X).all() and p.X.max() < 4 for p in processed)


def test_expression_follows_the_image_content():
    slide = render_synthetic_slide(seed=11, n_rows=10, n_cols=10)
    features = spot_features(slide, 112)
    programme = make_gene_programme(0)
    counts = simulate_counts(features, programme, np.random.default_rng(0))
    share = counts / counts.sum(axis=1, keepdims=True)
    in_tissue = features["tissue"].to_numpy() > 0.5
    genes = programme.gene_names

    def r(gene: str, feature: str) -> float:
        x = share[in_tissue, genes.index(gene)]
        return float(np.corrcoef(x, features[feature].to_numpy()[in_tissue])[0, 1])

    assert r("SYN_TUMOUR_01", "tumour_nuclei") > 0.5
    assert r("SYN_IMMUNE_01", "immune_nuclei") > 0.5
    assert r("SYN_ADIPOSE_01", "vacuole") > 0.5
    # every region type appears and looks different in the pixels themselves
    regions = {int(v) for v in np.unique(slide.region) if v >= 0}
    assert regions == set(range(len(TISSUE_TYPES)))
    means = {t: slide.image[slide.region == t].reshape(-1, 3).mean(axis=0) for t in regions}
    assert means[2].sum() < means[1].sum()  # dense immune nuclei darker than stroma
    assert means[3].sum() > means[0].sum()  # adipose vacuoles lighter than tumour
    assert set(FEATURES) <= set(features.columns)


def test_seeded_and_refuses_to_overwrite(dataset, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", sections=("A1", "B1"), n_rows=8,
                                       n_cols=8, seed=3)
    for section in ("A1", "B1"):
        a = pd.read_csv(dataset.counts_path(section), sep="\t", index_col=0)
        b = pd.read_csv(again.counts_path(section), sep="\t", index_col=0)
        pd.testing.assert_frame_equal(a, b)
    with pytest.raises(FileExistsError, match="already exists"):
        generate_synthetic_dataset(tmp_path / "again", sections=("A1",), n_rows=4, n_cols=4)
    with pytest.raises(ValueError, match="HER2\\+-style names"):
        generate_synthetic_dataset(tmp_path / "bad", sections=("slide1",))
    assert "not biological" in SYNTHETIC_NOTE
