"""mclstexp-hub: mclSTExp spatial gene expression prediction from H&E, as a Hugging Face zoo.

Importing the package registers the model, its image processor and the
`spatial-gene-expression` pipeline with transformers' Auto classes and pipeline registry.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_mclstexp import MclSTExpConfig
from .image_processing_mclstexp import MclSTExpImageProcessor
from .modeling_mclstexp import MclSTExpModel, MclSTExpOutput, MclSTExpPrediction
from .pipeline_mclstexp import MclSTExpPipeline, save_pipeline_code
from .spot_bank_mclstexp import SpotBank

__version__ = "0.1.0"

AutoConfig.register("mclstexp", MclSTExpConfig, exist_ok=True)
AutoModel.register(MclSTExpConfig, MclSTExpModel, exist_ok=True)
AutoImageProcessor.register(
    MclSTExpConfig, image_processor_classes={"torchvision": MclSTExpImageProcessor}, exist_ok=True
)

# Saving writes `auto_map` and copies the remote-code files next to the weights, so a saved
# checkpoint loads with trust_remote_code=True where this package is not installed.
MclSTExpConfig.register_for_auto_class()
MclSTExpModel.register_for_auto_class("AutoModel")
MclSTExpImageProcessor.register_for_auto_class()

if PIPELINE_REGISTRY.supported_tasks.get("spatial-gene-expression", {}).get("impl") is not (
    MclSTExpPipeline
):
    PIPELINE_REGISTRY.register_pipeline(
        "spatial-gene-expression",
        pipeline_class=MclSTExpPipeline,
        pt_model=AutoModel,
        type="image",
    )

__all__ = [
    "MclSTExpConfig",
    "MclSTExpImageProcessor",
    "MclSTExpModel",
    "MclSTExpOutput",
    "MclSTExpPipeline",
    "MclSTExpPrediction",
    "SpotBank",
    "save_pipeline_code",
    "__version__",
]
