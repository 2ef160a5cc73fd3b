"""Cross-validation folds over tissue sections.

- ``section``: leave-one-section-out, the paper's protocol. Other sections of the held-out
  section's patient stay in training, so neighbouring tissue of the same tumour leaks into the
  reference — results are optimistic.
- ``patient``: leave-one-patient-out: every section of a patient is held out together, so no
  patient is ever on both sides (the leak-free protocol).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

SPLITS = ("section", "patient")


@dataclass(frozen=True)
class Fold:
    """One fold: sections to hold out and sections to train on (disjoint, in input order)."""

    fold: int
    held_out: tuple[str, ...]
    train: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"fold": d["fold"], "held_out": list(d["held_out"]), "train": list(d["train"])}


def _check_sections(sections: Sequence[str]) -> list[str]:
    sections = [str(s) for s in sections]
    dups = sorted({s for s in sections if sections.count(s) > 1})
    if dups:
        raise ValueError(f"sections given more than once: {dups}.")
    if len(sections) < 2:
        raise ValueError(
            f"cross-validation needs at least 2 sections (one to hold out, one to train on); "
            f"got {sections}."
        )
    return sections


def section_folds(sections: Sequence[str]) -> list[Fold]:
    """Leave-one-section-out: fold i holds out `sections[i]`."""
    sections = _check_sections(sections)
    return [
        Fold(i, (s,), tuple(t for t in sections if t != s)) for i, s in enumerate(sections)
    ]


def patient_folds(sections: Sequence[str], patient_of: Mapping[str, str]) -> list[Fold]:
    """Leave-one-patient-out: one fold per patient, in order of first appearance."""
    sections = _check_sections(sections)
    missing = [s for s in sections if s not in patient_of]
    if missing:
        raise ValueError(
            f"no patient known for sections {missing}; the dataset metadata's 'patients' map "
            "(mclstexp_dataset.json) must name one per section."
        )
    patients = list(dict.fromkeys(str(patient_of[s]) for s in sections))
    if len(patients) < 2:
        raise ValueError(
            f"a patient split needs sections of at least 2 patients; all of {sections} belong "
            f"to patient {patients[0]!r}. Use --split section or add another patient's sections."
        )
    folds = []
    for i, patient in enumerate(patients):
        held = tuple(s for s in sections if str(patient_of[s]) == patient)
        folds.append(Fold(i, held, tuple(s for s in sections if s not in held)))
    return folds


def make_folds(
    sections: Sequence[str], split: str, patient_of: Mapping[str, str] | None = None
) -> list[Fold]:
    """Folds for `split` ("section" or "patient")."""
    if split == "section":
        return section_folds(sections)
    if split == "patient":
        if patient_of is None:
            raise ValueError("a patient split needs each section's patient (patient_of).")
        return patient_folds(sections, patient_of)
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")


def her2st_patient(section: str) -> str:
    """HER2+ section names are patient letter + replicate number (B4 → patient B)."""
    if not section or not section[0].isalpha():
        raise ValueError(f"{section!r} is not a HER2+ section name like 'B4'.")
    return section[0].upper()


__all__ = ["SPLITS", "Fold", "her2st_patient", "make_folds", "patient_folds", "section_folds"]
