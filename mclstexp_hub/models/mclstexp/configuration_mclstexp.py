"""Configuration of mclSTExp (Min et al., Briefings in Bioinformatics 2024).

Hub-bound remote code: imports only third-party packages (and, relatively, its siblings).
Defaults follow the paper and the authors' public code; every deviation is a named field.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

RETRIEVAL_DISTANCES = ("l1", "l2", "cosine")
RETRIEVAL_WEIGHTINGS = ("inverse_square", "mean", "softmax")
PIXEL_SCALINGS = ("unit", "imagenet")


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
            in [0, max_position)). Smaller values make much smaller checkpoints.
        has_spot_encoder: False for an inference-only checkpoint (image tower + bank).
        dropout: dropout in projection heads and spot Transformer (0.0 in the reference).
        contrastive_temperature: logits = spot @ image.T / temperature (1.0).
        retrieval_k: number of retrieved bank spots (200 for HER2+/cSCC, 2,400 for Alex+10x).
        retrieval_distance: distance for the retrieval weights: l1 (reference code), l2 (the
            paper's ablation best), cosine.
        retrieval_weighting: inverse_square (paper: w ∝ 1/d²), mean (BLEEP), softmax (w ∝ e^-d).
        patch_size: square patch side in full-resolution pixels (224, one spot diameter).
        pixel_scaling: "unit" ([0, 1], as the reference) or "imagenet" (mean/std normalised).
        expression_transform / expression_units: how the targets were made (recorded so that
            MSE/MAE are comparable); set by the dataset the model is trained on.
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
    retrieval_distance: str = "l1"
    retrieval_weighting: str = "inverse_square"
    patch_size: int = 224
    pixel_scaling: str = "unit"
    expression_transform: str | None = None
    expression_units: str | None = None

    def __post_init__(self, **kwargs):
        self._check_fields()
        super().__post_init__(**kwargs)

    # --------------------------------------------------------------- helpers
    @property
    def n_genes(self) -> int:
        return len(self.gene_names or [])

    @property
    def spot_mlp_dim(self) -> int:
        return self.spot_encoder_mlp_dim if self.spot_encoder_mlp_dim else self.n_genes

    def _check_fields(self) -> None:
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
        positive = {
            "projection_dim": self.projection_dim,
            "spot_encoder_heads": self.spot_encoder_heads,
            "spot_encoder_head_dim": self.spot_encoder_head_dim,
            "max_position": self.max_position,
            "retrieval_k": self.retrieval_k,
            "patch_size": self.patch_size,
        }
        if self.image_feature_dim is not None:
            positive["image_feature_dim"] = self.image_feature_dim
        if self.spot_encoder_mlp_dim is not None:
            positive["spot_encoder_mlp_dim"] = self.spot_encoder_mlp_dim
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MclSTExpConfig.{name} must be a positive integer; got {value!r}.")
        if self.spot_encoder_layers < 0:
            raise ValueError(
                "MclSTExpConfig.spot_encoder_layers must be >= 0 (0 = no spot Transformer); "
                f"got {self.spot_encoder_layers!r}."
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"MclSTExpConfig.dropout must be in [0, 1); got {self.dropout!r}.")
        if not float(self.contrastive_temperature) > 0.0:
            raise ValueError(
                "MclSTExpConfig.contrastive_temperature must be > 0; got "
                f"{self.contrastive_temperature!r}."
            )
        if self.retrieval_distance not in RETRIEVAL_DISTANCES:
            raise ValueError(
                f"MclSTExpConfig.retrieval_distance must be one of {RETRIEVAL_DISTANCES}; got "
                f"{self.retrieval_distance!r}."
            )
        if self.retrieval_weighting not in RETRIEVAL_WEIGHTINGS:
            raise ValueError(
                f"MclSTExpConfig.retrieval_weighting must be one of {RETRIEVAL_WEIGHTINGS}; got "
                f"{self.retrieval_weighting!r}."
            )
        if self.pixel_scaling not in PIXEL_SCALINGS:
            raise ValueError(
                f"MclSTExpConfig.pixel_scaling must be one of {PIXEL_SCALINGS}; got "
                f"{self.pixel_scaling!r}."
            )
        import timm

        if not timm.is_model(self.image_encoder):
            similar = timm.list_models(f"*{self.image_encoder.split('_')[0][:8]}*")[:8]
            raise ValueError(
                f"MclSTExpConfig.image_encoder {self.image_encoder!r} is not a timm model name. "
                f"Allowed: any name in timm.list_models(), e.g. 'densenet121', 'resnet18'"
                + (f"; similar names: {similar}" if similar else "")
                + "."
            )


__all__ = ["MclSTExpConfig"]
