"""One reader class per platform, looked up by name: ``reader_factory("visium", image=...)``.

Every platform answers the same three questions — which sections does this input hold, read
one of them, read several — so callers (``data build``, the CLI, tests) pick a reader by its
kind instead of branching on it. Subclasses register themselves with ``@register_reader``;
``list_readers()`` is what the CLI offers as choices.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..errors import DataError, preview

if TYPE_CHECKING:
    import anndata as ad


class SectionReader:
    """Raw files of one platform's layout → one validated AnnData per tissue section.

    name: the kind users pass (``mclstexp data build NAME``).
    license_note: terms of the source data written into built datasets (None: user data).
    layout: what ``data_dir`` must be, in words (help texts and error messages).
    image_from_argument: the full-resolution image is passed to the reader (``image=``)
        instead of being found inside ``data_dir``.
    one_section_per_input: ``data_dir`` yields one section at most (one image per input).
    input_is_file: ``data_dir`` is one file (an .h5ad), not a folder.
    """

    name: ClassVar[str] = ""
    license_note: ClassVar[str | None] = None
    layout: ClassVar[str] = ""
    image_from_argument: ClassVar[bool] = False
    one_section_per_input: ClassVar[bool] = False
    input_is_file: ClassVar[bool] = False

    def list_sections(self, data_dir: str | Path, *, with_images_only: bool = False) -> list[str]:
        """Names of the sections ``data_dir`` holds (only those with an image, if asked)."""
        raise NotImplementedError(f"{type(self).__name__} must implement list_sections")

    def read_section(self, data_dir: str | Path, section: str) -> ad.AnnData:
        """One section as a validated AnnData (see ``_section.make_section``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_section")

    def read(self, data_dir: str | Path, sections: Sequence[str] | None = None) -> list[ad.AnnData]:
        """``sections`` (default: every section listed) in order, one AnnData each.

        Sections read without an image are logged as a warning (on the subclass's module
        logger): they give expression but no patches.
        """
        names = list(sections) if sections else self.list_sections(data_dir)
        if not names:
            raise FileNotFoundError(
                f"{data_dir}: no {self.name} section found; --data-dir must be {self.layout}"
            )
        if self.one_section_per_input and len(names) > 1:
            raise DataError(
                f"{data_dir}: holds or was asked for several sections ({preview(names)}), but a "
                f"{self.name} input is read one section at a time (one image); pick one with "
                "--sections NAME"
            )
        adatas = [self.read_section(data_dir, s) for s in names]
        no_image = [
            s
            for s, a in zip(names, adatas, strict=True)
            if not next(iter(a.uns["spatial"].values()))["metadata"].get("has_image")
        ]
        if no_image:
            logging.getLogger(type(self).__module__).warning(
                "%s sections without an image under %s (expression only): %s",
                self.name,
                data_dir,
                preview(no_image, 40),
            )
        return adatas

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_READERS: dict[str, type[SectionReader]] = {}
R = TypeVar("R", bound=type[SectionReader])


def register_reader(cls: R) -> R:
    """Class decorator: make ``cls`` available to ``reader_factory(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: set the class attribute `name` before registering")
    if cls.name in _READERS and _READERS[cls.name] is not cls:
        raise ValueError(f"a reader named {cls.name!r} is already registered ({_READERS[cls.name]})")
    _READERS[cls.name] = cls
    return cls


def list_readers() -> list[str]:
    """Kinds of the registered readers, in registration order."""
    return list(_READERS)


def reader_class(kind: str) -> type[SectionReader]:
    """The reader class registered as ``kind``; ValueError names the allowed kinds."""
    try:
        return _READERS[kind]
    except KeyError:
        raise DataError(f"unknown data kind {kind!r}; choose one of {list_readers()}") from None


def reader_factory(kind: str, **options: Any) -> SectionReader:
    """A reader for ``kind``, built with its ``options`` (e.g. ``image=`` for Visium/h5ad)."""
    cls = reader_class(kind)
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DataError(
            f"{kind} reader ({cls.__name__}) takes no option(s) {unknown}; its options are "
            f"{accepted or 'none'}"
        )
    return cls(**options)


__all__ = [
    "SectionReader",
    "list_readers",
    "reader_class",
    "reader_factory",
    "register_reader",
]
