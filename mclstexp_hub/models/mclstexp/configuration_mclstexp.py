"""Configuration of mclSTExp (Min et al., Briefings in Bioinformatics 2024).

Hub-bound remote code: imports only third-party packages (and, relatively, its siblings).
Defaults follow the paper and the authors' public code; every deviation is a named field.
"""


from functools import wraps

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig

# The one list of allowed values per field lives beside the code that uses it (PyTorch- and
# transformers-free, for the ONNX Runtime prediction path); the fields are typed with them.
from .pixels_mclstexp import PIXEL_SCALINGS, PixelScaling
from .retrieval_mclstexp import (
    RETRIEVAL_DISTANCES,
    RETRIEVAL_WEIGHTINGS,
    RetrievalDistance,
    RetrievalWeighting,
)

MAX_POSITION_LIMIT = 65536
"""Largest `max_position` accepted: the reference's table size. Two (65,536, 785) float tables
are ≈ 400 MB already; ST/Visium array coordinates are grid indices below a few hundred, so a
larger value means pixel coordinates were passed as array coordinates."""

_POSITIVE_INT_FIELDS = (
    "projection_dim", "spot_encoder_heads", "spot_encoder_head_dim", "max_position",
    "retrieval_k", "patch_size",
)
_OPTIONAL_POSITIVE_INT_FIELDS = ("image_feature_dim", "spot_encoder_mlp_dim", "encoder_input_size")
MIN_ENCODER_INPUT_SIZE = 32
"""Smallest side the image tower may be fed: five stride-2 stages leave one pixel at 32."""


class MclSTExpConfigError(ValueError):
    """A config field has a value the model cannot use (the message names the field)."""


@strict
class MclSTExpConfig(PreTrainedConfig):
    r"""Configuration of an mclSTExp model.

    Args:
        gene_names: ordered genes the model predicts; `n_genes` follows from it. The spot tower's
            width is `n_genes` (the expression vector *is* the token).
        image_encoder: timm model name of the image tower (default DenseNet-121, as the paper).
        image_encoder_final_activation: keep the encoder's final norm activation. The reference
            uses torchvision's `densenet121().features`, which ends in BatchNorm *without* ReLU,
            so the default is False (timm's `features.norm5.act` becomes Identity).
        image_feature_dim: the encoder's pooled feature width; filled from timm when None.
        projection_dim: joint embedding width (256).
        spot_encoder_layers / spot_encoder_heads / spot_encoder_head_dim: the pre-norm
            Transformer over the spots of one batch (2 / 8 / 64). 0 layers = BLEEP-style MLP.
        spot_encoder_mlp_dim: MLP width; None means `n_genes` as in the reference.
        use_position_embeddings: add learnable x/y embeddings of the array coordinates.
        max_position: rows of each position table (65,536 in the reference; coordinates must be
            in [0, max_position), at most `MAX_POSITION_LIMIT`). Smaller values make much smaller
            checkpoints.
        has_spot_encoder: False for an inference-only checkpoint (image tower + bank).
        dropout: dropout in projection heads and spot Transformer (0.0 in the reference).
        contrastive_temperature: logits = spot @ image.T / temperature (1.0).
        retrieval_k: number of retrieved bank spots (200 for HER2+/cSCC, 2,400 for Alex+10x).
        retrieval_distance: distance for the retrieval weights: l1 (reference code), l2 (the
            paper's ablation best), cosine.
        retrieval_weighting: inverse_square (paper: w ∝ 1/d²), mean (BLEEP), softmax (w ∝ e^-d).
        patch_size: square patch side in full-resolution pixels (224, one spot diameter).
        encoder_input_size: side in pixels the image encoder sees. None (default) feeds the
            patch as cut; a number resamples every patch (bilinear, antialiased) to that side
            inside the image tower, so training, `predict`, the pipeline and the bank all see
            the same input. The CPU end-to-end profile trains a small encoder at 64-112 px.
        pixel_scaling: "unit" ([0, 1], as the reference) or "imagenet" (mean/std normalised).
        expression_transform / expression_units: how the targets were made (recorded so that
            MSE/MAE are comparable); set by the dataset the model is trained on.

    Invalid values raise `MclSTExpConfigError` (a ValueError) naming the field: types and the
    allowed values of `Literal` fields are checked by the strict dataclass, ranges by the
    `validate_*` hooks below.
    """

    model_type = "mclstexp"

    gene_names: list[str] | None = None
    image_encoder: str = "densenet121"
    image_encoder_final_activation: bool = False
    image_feature_dim: int | None = None
    projection_dim: int = 256
    spot_encoder_layers: int = 2
    spot_encoder_heads: int = 8
    spot_encoder_head_dim: int = 64
    spot_encoder_mlp_dim: int | None = None
    use_position_embeddings: bool = True
    max_position: int = 65536
    has_spot_encoder: bool = True
    dropout: float = 0.0
    contrastive_temperature: float = 1.0
    retrieval_k: int = 200
    retrieval_distance: RetrievalDistance = "l1"
    retrieval_weighting: RetrievalWeighting = "inverse_square"
    patch_size: int = 224
    encoder_input_size: int | None = None
    pixel_scaling: PixelScaling = "unit"
    expression_transform: str | None = None
    expression_units: str | None = None

    # --------------------------------------------------------------- helpers
    @property
    def custom_pipelines(self) -> dict:
        """The saved `custom_pipelines` entry — hidden while the installed package serves it.

        config.json records the pipeline's remote code for users without `mclstexp_hub`; where
        the package is installed and has registered the task, transformers would still demand
        `trust_remote_code=True` for any config carrying that entry. Reading it as empty then
        lets `pipeline("spatial-gene-expression", model=ckpt)` use the registered class; the
        entry itself stays in `__dict__`, so saving writes it unchanged.
        """
        stored = self.__dict__.get("custom_pipelines") or {}
        if stored and _package_serves(stored):
            return {}
        return stored

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict) -> None:
        self.__dict__["custom_pipelines"] = value

    @property
    def n_genes(self) -> int:
        return len(self.gene_names or [])

    @property
    def spot_mlp_dim(self) -> int:
        return self.spot_encoder_mlp_dim if self.spot_encoder_mlp_dim else self.n_genes

    # ------------------------------------------------ strict-dataclass validators
    def validate_gene_names(self) -> None:
        genes = self.gene_names
        if genes is None or len(genes) == 0:
            raise ValueError(
                "MclSTExpConfig.gene_names must be a non-empty ordered list of gene symbols "
                "(e.g. the lines of a panel file such as her2st_785.txt); got "
                f"{genes!r}."
            )
        if any(not isinstance(g, str) or not g for g in genes):
            raise ValueError("MclSTExpConfig.gene_names must contain non-empty strings only.")
        if len(set(genes)) != len(genes):
            seen: set[str] = set()
            dups = sorted({g for g in genes if g in seen or seen.add(g)})
            raise ValueError(
                f"MclSTExpConfig.gene_names has duplicates: {dups[:10]}. Make them unique "
                "(anndata's `var_names_make_unique()` appends -1, -2, ...)."
            )

    def validate_positive_sizes(self) -> None:
        names = list(_POSITIVE_INT_FIELDS) + [
            n for n in _OPTIONAL_POSITIVE_INT_FIELDS if getattr(self, n) is not None
        ]
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MclSTExpConfig.{name} must be a positive integer; got {value!r}.")
        if self.encoder_input_size is not None and self.encoder_input_size < MIN_ENCODER_INPUT_SIZE:
            raise ValueError(
                f"MclSTExpConfig.encoder_input_size must be >= {MIN_ENCODER_INPUT_SIZE} px (or None "
                f"to feed patches as cut); got {self.encoder_input_size!r}."
            )
        if self.max_position > MAX_POSITION_LIMIT:
            raise ValueError(
                f"MclSTExpConfig.max_position={self.max_position:,} exceeds {MAX_POSITION_LIMIT:,}: "
                "the two position tables would need "
                f"{2 * self.max_position * max(self.n_genes, 1) * 4 / 2**30:.1f} GiB. Array "
                "coordinates are spot-grid indices (tens to hundreds), not pixels; map them to "
                "the grid first."
            )
        if self.spot_encoder_layers < 0:
            raise ValueError(
                "MclSTExpConfig.spot_encoder_layers must be >= 0 (0 = no spot Transformer); "
                f"got {self.spot_encoder_layers!r}."
            )

    def validate_ranges(self) -> None:
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MclSTExpConfig.dropout must be in [0, 1); got {self.dropout!r}.")
        if not float(self.contrastive_temperature) > 0.0:
            raise ValueError(
                "MclSTExpConfig.contrastive_temperature must be > 0; got "
                f"{self.contrastive_temperature!r}."
            )

    def validate_image_encoder(self) -> None:
        import timm

        if not timm.is_model(self.image_encoder):
            similar = timm.list_models(f"*{self.image_encoder.split('_')[0][:8]}*")[:8]
            raise ValueError(
                f"MclSTExpConfig.image_encoder {self.image_encoder!r} is not a timm model name. "
                f"Allowed: any name in timm.list_models(), e.g. 'densenet121', 'resnet18'"
                + (f"; similar names: {similar}" if similar else "")
                + "."
            )


def _package_serves(custom: dict) -> bool:
    """True when every task in `custom` is registered locally by the installed mclstexp_hub."""
    import sys

    registry = getattr(sys.modules.get("transformers.pipelines"), "PIPELINE_REGISTRY", None)
    if registry is None:
        return False
    for task in custom:
        impl = registry.supported_tasks.get(task, {}).get("impl")
        if impl is None or not getattr(impl, "__module__", "").startswith("mclstexp_hub."):
            return False
    return True


def _raise_value_errors(init):
    """Strict-dataclass errors → `MclSTExpConfigError` (a ValueError), as callers expect."""

    @wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            init(self, *args, **kwargs)
        except StrictDataclassError as exc:
            cause = exc.__cause__ or exc
            raise MclSTExpConfigError(f"MclSTExpConfig: {cause}") from exc

    return __init__


MclSTExpConfig.__init__ = _raise_value_errors(MclSTExpConfig.__init__)


__all__ = [
    "MAX_POSITION_LIMIT",
    "PIXEL_SCALINGS",
    "RETRIEVAL_DISTANCES",
    "RETRIEVAL_WEIGHTINGS",
    "MclSTExpConfig",
    "MclSTExpConfigError",
]
