"""The paper's datasets, one registry entry each: every fact about a dataset is written once.

Training (retrieval k, epochs), model cards (titles, citations, panel sizes), the benchmark
(the paper's reported PCC figures, which datasets it can build) and ``data build`` (licence
notes, reader kind) used to keep their own copies of these facts; they now read them from
here. Pure Python on purpose: the data subpackage and the CLI import this module, and neither
may pull in torch or transformers.

Add a dataset with ``register_preset(DatasetPreset(...))``; look one up with
``get_preset(name)``; iterate with ``list_presets()`` / ``preset_names()`` (registration order).
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_SOURCE = "Min et al., Briefings in Bioinformatics 2024"
"""Where the reported figures come from (the paper's headline table)."""
PAPER_PROTOCOL = "leave-one-section-out"
"""The paper's evaluation split for every dataset (mean over held-out sections)."""


@dataclass(frozen=True)
class DatasetPreset:
    """Everything the package states about one of the paper's datasets.

    name: registry key and dataset id (``her2st``, ``cscc``, ``alex10x``).
    reader_kind: the ``mclstexp data build`` reader for its raw files.
    benchmark_from_raw: the benchmark runner can build the whole dataset from one raw
        ``--data-dir`` with ``reader_kind`` (False when it spans several separate inputs).
    n_genes / gene_list_file: the paper's gene panel and the file that lists it, in order.
    retrieval_k / epochs: the paper's top-k bank neighbours and end-to-end training epochs.
    n_sections: sections of the paper's leave-one-section-out evaluation.
    paper_acg / paper_heg / paper_source: the PCC(ACG) / PCC(HEG) the paper *reports*.
    license_note: terms of the source data, written into built datasets' cards.
    title ... patient_structure: texts of the model card.
    """

    name: str
    reader_kind: str
    benchmark_from_raw: bool
    n_genes: int
    gene_list_file: str
    retrieval_k: int
    epochs: int
    n_sections: int
    paper_acg: float
    paper_heg: float
    license_note: str
    title: str
    short: str
    platform: str
    source: str
    data_citation: str
    sections_text: str
    patient_structure: str
    paper_source: str = PAPER_SOURCE

    @property
    def paper_split(self) -> str:
        """The split the paper's figures were measured on, in words."""
        return f"{PAPER_PROTOCOL} over {self.n_sections} sections"

    def __post_init__(self) -> None:
        for field in ("n_genes", "retrieval_k", "epochs", "n_sections"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"DatasetPreset {self.name!r}: {field} must be a positive integer; "
                    f"got {value!r}"
                )
        for field in ("paper_acg", "paper_heg"):
            if not -1.0 <= getattr(self, field) <= 1.0:
                raise ValueError(
                    f"DatasetPreset {self.name!r}: {field} is a Pearson r, so within [-1, 1]; "
                    f"got {getattr(self, field)!r}"
                )


_PRESETS: dict[str, DatasetPreset] = {}


def register_preset(preset: DatasetPreset) -> DatasetPreset:
    """Add ``preset`` to the registry; a second preset with the same name is an error."""
    if preset.name in _PRESETS:
        raise ValueError(
            f"dataset preset {preset.name!r} is already registered; choose another name"
        )
    _PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> DatasetPreset:
    """The preset called ``name``; unknown names raise ValueError listing the known ones."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset preset {name!r}; choose one of {preset_names()}"
        ) from None


def list_presets() -> list[DatasetPreset]:
    """Registered presets in registration order."""
    return list(_PRESETS.values())


def preset_names() -> list[str]:
    """Names of the registered presets in registration order."""
    return list(_PRESETS)


def benchmark_datasets() -> tuple[str, ...]:
    """Names of the presets the benchmark runner can build from one raw data folder."""
    return tuple(p.name for p in _PRESETS.values() if p.benchmark_from_raw)


register_preset(
    DatasetPreset(
        name="her2st",
        reader_kind="her2st",
        benchmark_from_raw=True,
        n_genes=785,
        gene_list_file="her2st_785.txt",
        retrieval_k=200,
        epochs=90,
        n_sections=32,
        paper_acg=0.2304,
        paper_heg=0.3866,
        license_note=(
            "Data of Andersson et al., Nat Commun 2021, distributed through "
            "github.com/almaan/her2st (and Zenodo 10.5281/zenodo.4751624); use is subject to "
            "the terms stated there and to citation of the original article — check them "
            "before redistributing."
        ),
        title="HER2-positive breast tumours (Andersson et al. 2021)",
        short="HER2+",
        platform="Spatial Transcriptomics (ST), 100 µm spots on a 2-D array grid",
        source="github.com/almaan/her2st (counts, spot files, H&E images)",
        data_citation=(
            "Andersson A. et al. Spatial deconvolution of HER2-positive breast cancer "
            "delineates tumor-associated cell type interactions. Nat Commun 12, 6012 (2021)."
        ),
        sections_text=(
            "36 sections of 8 patients (A-H); the paper evaluates 32 of them (A2-G3, 7 patients)"
        ),
        patient_structure="3 or 6 sections per patient",
    )
)

register_preset(
    DatasetPreset(
        name="cscc",
        reader_kind="cscc",
        benchmark_from_raw=True,
        n_genes=171,
        gene_list_file="cscc_171.txt",
        retrieval_k=200,
        epochs=90,
        n_sections=12,
        paper_acg=0.3235,
        paper_heg=0.4261,
        license_note=(
            "Data of Ji et al., Cell 2020, from NCBI GEO accession GSE144240. NCBI places no "
            "restrictions on GEO data, but submitters may hold rights; cite the original "
            "article."
        ),
        title="Human cutaneous squamous cell carcinoma (Ji et al. 2020, GSE144240)",
        short="cSCC",
        platform="Spatial Transcriptomics (ST) sections, 100 µm spots",
        source="GEO GSE144240",
        data_citation=(
            "Ji A. L. et al. Multimodal analysis of composition and spatial architecture in "
            "human squamous cell carcinoma. Cell 182, 497-514 (2020)."
        ),
        sections_text="12 sections: 4 patients x 3 replicates",
        patient_structure="3 replicate sections per patient",
    )
)

register_preset(
    DatasetPreset(
        name="alex10x",
        reader_kind="visium",
        benchmark_from_raw=False,  # nine separate Space Ranger runs, not one folder
        n_genes=685,
        gene_list_file="alex10x_685.txt",
        retrieval_k=2400,
        epochs=15,
        n_sections=9,
        paper_acg=0.1949,
        paper_heg=0.3611,
        license_note=(
            "Data of Wu et al., Nat Genet 2021 (Swarbrick laboratory, doi.org/10.48610/4fb74a9) "
            "and 10x Genomics public Visium datasets; use is subject to the terms stated at "
            "each source and to citation of the original article — check them before "
            "redistributing."
        ),
        title="Breast cancer Visium: Swarbrick laboratory (Wu et al. 2021) + 10x Genomics",
        short="Alex+10x",
        platform="10x Genomics Visium, 55 µm spots",
        source=(
            "doi.org/10.48610/4fb74a9 (Swarbrick laboratory) and 10x Genomics public datasets"
        ),
        data_citation=(
            "Wu S. Z. et al. A single-cell and spatially resolved atlas of human breast cancers. "
            "Nat Genet 53, 1334-1347 (2021); 10x Genomics Visium breast cancer datasets."
        ),
        sections_text="9 sections: 6 Swarbrick-laboratory samples and 3 10x Genomics samples",
        patient_structure="two of the 10x sections are serial sections of one block",
    )
)


__all__ = [
    "PAPER_PROTOCOL",
    "PAPER_SOURCE",
    "DatasetPreset",
    "benchmark_datasets",
    "get_preset",
    "list_presets",
    "preset_names",
    "register_preset",
]
