"""mclstexp-hub: mclSTExp spatial gene expression prediction from H&E, as a Hugging Face zoo.

Importing the package registers the model with transformers' Auto classes (and, once
available, the image processor and the `spatial-gene-expression` pipeline).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .configuration_mclstexp import MclSTExpConfig
from .modeling_mclstexp import MclSTExpModel, MclSTExpOutput, MclSTExpPrediction
from .spot_bank_mclstexp import SpotBank

__version__ = "0.1.0"

AutoConfig.register("mclstexp", MclSTExpConfig, exist_ok=True)
AutoModel.register(MclSTExpConfig, MclSTExpModel, exist_ok=True)

# Saving writes `auto_map` and copies the remote-code files next to the weights, so a saved
# checkpoint loads with trust_remote_code=True where this package is not installed.
MclSTExpConfig.register_for_auto_class()
MclSTExpModel.register_for_auto_class("AutoModel")

__all__ = [
    "MclSTExpConfig",
    "MclSTExpModel",
    "MclSTExpOutput",
    "MclSTExpPrediction",
    "SpotBank",
    "__version__",
]
