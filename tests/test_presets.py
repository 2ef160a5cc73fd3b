"""The dataset registry: each paper dataset's facts, stated once, and the views built on it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from data_fixtures import GENE_LISTS

from mclstexp_hub.presets import (
    PAPER_SOURCE,
    DatasetPreset,
    benchmark_datasets,
    get_preset,
    list_presets,
    preset_names,
    register_preset,
)

# The paper's facts (GUIDE.md, "The method, precisely"): reader, genes, k, epochs, sections,
# reported PCC(ACG) / PCC(HEG) under leave-one-section-out.
PAPER = {
    "her2st": ("her2st", 785, 200, 90, 32, 0.2304, 0.3866),
    "cscc": ("cscc", 171, 200, 90, 12, 0.3235, 0.4261),
    "alex10x": ("visium", 685, 2400, 15, 9, 0.1949, 0.3611),
}


def test_registry_holds_the_three_paper_datasets():
    assert preset_names() == ["her2st", "cscc", "alex10x"]
    assert [p.name for p in list_presets()] == preset_names()
    for name, (reader, n_genes, k, epochs, n_sections, acg, heg) in PAPER.items():
        p = get_preset(name)
        assert (p.reader_kind, p.n_genes, p.retrieval_k, p.epochs) == (reader, n_genes, k, epochs)
        assert (p.n_sections, p.paper_acg, p.paper_heg) == (n_sections, acg, heg)
        assert p.paper_source == PAPER_SOURCE
        assert p.paper_split == f"leave-one-section-out over {n_sections} sections"
        assert p.gene_list_file == f"{name}_{n_genes}.txt"
        assert p.license_note and p.title and p.short and p.data_citation
    assert benchmark_datasets() == ("her2st", "cscc")  # alex10x spans nine Visium runs


def test_reader_kinds_are_registered_readers():
    from mclstexp_hub.data.readers import list_readers

    assert {p.reader_kind for p in list_presets()} <= set(list_readers())


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(PAPER))
def test_gene_list_file_has_n_genes(name):
    path = GENE_LISTS / get_preset(name).gene_list_file
    if not path.is_file():
        pytest.skip(f"shared gene lists not found: {path}")
    genes = [g for g in path.read_text().split() if g]
    assert len(genes) == get_preset(name).n_genes == len(set(genes))


def test_unknown_duplicate_and_invalid_presets():
    with pytest.raises(ValueError, match=r"unknown dataset preset 'stnet'.*her2st.*cscc.*alex10x"):
        get_preset("stnet")
    with pytest.raises(ValueError, match="'her2st' is already registered"):
        register_preset(get_preset("her2st"))
    with pytest.raises(ValueError, match="'bad': n_genes must be a positive integer"):
        dataclasses.replace(get_preset("cscc"), name="bad", n_genes=0)
    with pytest.raises(ValueError, match="'bad': paper_acg is a Pearson r"):
        dataclasses.replace(get_preset("cscc"), name="bad", paper_acg=23.04)
    assert "bad" not in preset_names()
    assert isinstance(get_preset("cscc"), DatasetPreset)


def test_old_public_views_equal_the_registry():
    from mclstexp_hub.benchmark.paper_numbers import PAPER_SPLIT, paper_reported
    from mclstexp_hub.data.readers import CsccReader, Her2stReader
    from mclstexp_hub.hub.cards import DATASETS
    from mclstexp_hub.training.profiles import DATASET_PRESETS, get_profile

    assert DATASET_PRESETS == {
        p.name: {"retrieval_k": p.retrieval_k, "epochs": p.epochs} for p in list_presets()
    }
    assert get_profile("paper", "alex10x").epochs == 15
    paper = paper_reported()
    assert paper["source"] == PAPER_SOURCE and paper["split"] == PAPER_SPLIT
    assert sorted(DATASETS) == sorted(preset_names())
    for p in list_presets():
        assert paper[p.name] == {
            "pcc_acg": p.paper_acg, "pcc_heg": p.paper_heg,
            "n_sections": p.n_sections, "n_genes": p.n_genes,
        }
        info = DATASETS[p.name]
        assert (info.key, info.title, info.short, info.platform, info.source) == (
            p.name, p.title, p.short, p.platform, p.source)
        assert (info.n_genes, info.panel_file, info.retrieval_k, info.paper_epochs) == (
            p.n_genes, p.gene_list_file, p.retrieval_k, p.epochs)
        assert (info.paper_acg, info.paper_heg, info.paper_split) == (
            p.paper_acg, p.paper_heg, p.paper_split)
        assert (info.sections, info.patient_structure, info.data_citation) == (
            p.sections_text, p.patient_structure, p.data_citation)
    assert Her2stReader.license_note == get_preset("her2st").license_note
    assert CsccReader.license_note == get_preset("cscc").license_note


def test_benchmark_dataset_kinds_come_from_the_registry():
    from mclstexp_hub.benchmark.runner import DATASET_KINDS

    assert DATASET_KINDS == benchmark_datasets()


def test_presets_module_is_pure_python():
    code = (
        "import sys, mclstexp_hub.presets; "
        "print(sorted(m for m in ('torch', 'transformers', 'anndata', 'pandas', 'numpy') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
