"""mclstexp-hub: mclSTExp spatial gene expression prediction from H&E, as a Hugging Face zoo.

`import mclstexp_hub` is cheap: it loads neither torch nor transformers, so the data tools
(`mclstexp_hub.data`, `mclstexp data build`) start fast. The model classes load on first use
(`mclstexp_hub.MclSTExpModel`, …), and they are registered with transformers' Auto classes and
the `spatial-gene-expression` pipeline as soon as transformers is imported — before or after
this package — so `AutoModel.from_pretrained(ckpt)` and `pipeline(...)` find them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

_MODEL_EXPORTS = (
    "MclSTExpConfig",
    "MclSTExpImageProcessor",
    "MclSTExpModel",
    "MclSTExpOutput",
    "MclSTExpPipeline",
    "MclSTExpPrediction",
    "SpotBank",
    "save_pipeline_code",
)


_HUB_PREFIX = "mclstexp_hub.models.mclstexp."


def _register_when_ready(just_loaded: str = "") -> None:
    """Register once transformers is loaded and none of our model modules is mid-import."""
    if "transformers" not in sys.modules:
        return
    for name, module in list(sys.modules.items()):
        spec = getattr(module, "__spec__", None)
        if name != just_loaded and name.startswith(_HUB_PREFIX) and getattr(
            spec, "_initializing", False
        ):
            return  # the module being imported will call us again when it is done
    importlib.import_module("mclstexp_hub.models.mclstexp").register()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Calls `_register_when_ready()` after `transformers` or one of our model modules loads.

    The Auto classes must be registered whichever comes first — `import mclstexp_hub` then
    `import transformers`, the reverse, or a direct import of a model module — without making
    `import mclstexp_hub` itself load torch and transformers.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers" and not fullname.startswith(_HUB_PREFIX):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_when_ready(fullname)

        spec.loader.exec_module = exec_then_register
        return spec


if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
_register_when_ready()


def __getattr__(name: str) -> Any:
    if name in _MODEL_EXPORTS:
        return getattr(importlib.import_module("mclstexp_hub.models.mclstexp"), name)
    raise AttributeError(f"module 'mclstexp_hub' has no attribute {name!r}")


__all__ = [*_MODEL_EXPORTS, "__version__"]
