"""mclSTExp: contrastive image/spot towers and expression prediction by retrieval.

Shaped like transformers' CLIP: a config, an output dataclass, `get_image_features`,
`get_spot_features`, `forward(..., return_loss=...)`. The spot tower treats *the spots of one
batch as one sequence* ("spots are words, a batch is a sentence"), so a spot's embedding
depends on which spots share its batch: the spot bank records the batching it was built with.

Hub-bound remote code: imports only third-party packages and, relatively, its siblings.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_mclstexp import MclSTExpConfig
from .spot_bank_mclstexp import SPOT_BANK_FILENAME, SpotBank

logger = logging.getLogger(__name__)

# The authors' bank is built with their evaluation DataLoader: batch_size 32, dataset order.
DEFAULT_BANK_BATCH_SIZE = 32


@dataclass
class MclSTExpOutput(ModelOutput):
    """Output of `MclSTExpModel.forward`.

    loss: symmetric cross-entropy of the spot/image similarity (when `return_loss`).
    logits_per_image: (B_img, B_spot) image-to-spot similarities / temperature.
    logits_per_spot: (B_spot, B_img), its transpose.
    image_embeds / spot_embeds: projection-head outputs (not L2-normalised).
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_spot: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    spot_embeds: torch.FloatTensor | None = None


@dataclass
class MclSTExpImageOutput(BaseModelOutputWithPooling):
    """Output of `MclSTExpModel.get_image_features` (CLIP's shape, plus the pooled features).

    pooler_output: projected image embeddings (B, projection_dim).
    image_features: pooled encoder features before the projection (B, image_feature_dim).
    last_hidden_state: the encoder's feature map, None when cached features were given.
    """

    image_features: torch.FloatTensor | None = None


@dataclass
class MclSTExpPrediction(ModelOutput):
    """Expression predicted by retrieval, with what was retrieved."""

    expression: torch.FloatTensor | None = None  # (N, n_genes)
    neighbour_indices: torch.LongTensor | None = None  # (N, k) rows of the spot bank
    neighbour_weights: torch.FloatTensor | None = None  # (N, k)
    image_embeds: torch.FloatTensor | None = None  # (N, projection_dim)
    # Weighted standard deviation of the k neighbours' expression (retrieval weights), per
    # gene (N, n_genes), and its mean over genes per spot (N,): how much the neighbours agree.
    neighbour_spread: torch.FloatTensor | None = None
    spot_neighbour_spread: torch.FloatTensor | None = None


class MclSTExpProjectionHead(nn.Module):
    """Linear → GELU → Linear → dropout → + first Linear's output → LayerNorm (as the paper)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear_in = nn.Linear(in_dim, out_dim)
        self.linear_out = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.linear_in(features)
        hidden = self.dropout(self.linear_out(F.gelu(projected)))
        return self.norm(hidden + projected)


class MclSTExpSpotAttention(nn.Module):
    """Multi-head self-attention over the spots of a batch (no bias on q/k/v, as the reference)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        # The reference skips the output projection only when it would be an identity map.
        self.project_out = not (heads == 1 and head_dim == dim)
        self.out = nn.Linear(inner, dim) if self.project_out else nn.Identity()
        self.out_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        attended = attended.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.out_dropout(self.out(attended))


class MclSTExpSpotBlock(nn.Module):
    """Pre-norm Transformer block: x + Attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MclSTExpSpotAttention(dim, heads, head_dim, dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, mlp_dim)
        self.mlp_out = nn.Linear(mlp_dim, dim)
        self.mlp_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        hidden = self.mlp_dropout(F.gelu(self.mlp_in(self.mlp_norm(x))))
        return x + self.mlp_dropout(self.mlp_out(hidden))


class MclSTExpImageTower(nn.Module):
    """A timm encoder without classifier, then global average pooling."""

    def __init__(self, config: MclSTExpConfig) -> None:
        super().__init__()
        import timm

        # pretrained=False: __init__ must never download (from_pretrained builds on `meta`).
        self.model = timm.create_model(
            config.image_encoder, pretrained=False, num_classes=0, global_pool=""
        )
        self.final_activation_removed = False
        if not config.image_encoder_final_activation:
            self.final_activation_removed = _remove_final_activation(self.model)
            if not self.final_activation_removed:
                logger.warning(
                    "image_encoder %r has no separable final activation; "
                    "image_encoder_final_activation=False has no effect for it.",
                    config.image_encoder,
                )
        self.num_features = int(self.model.num_features)
        for module in self.model.modules():
            module._mclstexp_encoder_owned = True  # see MclSTExpPreTrainedModel._init_weights

        self.input_size = config.encoder_input_size
        self.checkpoint_stages = False  # set by MclSTExpModel's gradient checkpointing switch

    def resample(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patches at `encoder_input_size` (bilinear, antialiased); unchanged when None/equal."""
        size = self.input_size
        if size is None or tuple(pixel_values.shape[-2:]) == (size, size):
            return pixel_values
        channels_last = pixel_values.is_contiguous(memory_format=torch.channels_last)
        out = F.interpolate(pixel_values, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out

    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's (unpooled) feature map of patches scaled as the image processor does.

        With gradient checkpointing on, a DenseNet's feature stages (stem, dense blocks,
        transitions) are also checkpointed one by one while training: only each stage's input
        is kept and the stage is recomputed in backward. timm's own switch only recomputes the
        bottleneck of each dense layer, which leaves the block activations in memory.
        """
        x = self.resample(pixel_values)
        stages = getattr(self.model, "features", None)
        if (self.checkpoint_stages and self.training and torch.is_grad_enabled()
                and isinstance(stages, nn.Sequential) and _forward_features_is(self.model, stages)):
            from torch.utils.checkpoint import checkpoint

            for stage in stages:
                x = checkpoint(stage, x, use_reentrant=False)
            return x
        return self.model.forward_features(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(pixel_values))

    # -------------------------------------------- split forward (partial fine-tuning)
    def feature_stages(self) -> nn.Sequential:
        """The encoder's feature stages, in order (a DenseNet's `features`: conv0 … norm5).

        Only encoders whose `forward_features` is exactly these stages run in sequence can be
        split (timm's DenseNets); others raise a ValueError.
        """
        stages = getattr(self.model, "features", None)
        if not (isinstance(stages, nn.Sequential) and _forward_features_is(self.model, stages)):
            raise ValueError(
                f"image_encoder {type(self.model).__name__!r} cannot be split into stages (only "
                "timm DenseNets, whose forward_features is `features(x)`, can); use a DenseNet "
                "such as 'densenet121' for a cache_stage / partial fine-tuning."
            )
        return stages

    @property
    def stage_names(self) -> list[str]:
        """Names of the feature stages, e.g. ['conv0', …, 'transition3', 'denseblock4', 'norm5']."""
        return [name for name, _ in self.feature_stages().named_children()]

    def _split_index(self, stage: str) -> int:
        names = self.stage_names
        if stage not in names:
            raise ValueError(f"Unknown encoder stage {stage!r}; the stages are {names}.")
        return names.index(stage) + 1

    def trunk_stages(self, stage: str) -> list[nn.Module]:
        """The stages up to and including `stage` (the part a cache_stage keeps frozen)."""
        return list(self.feature_stages())[: self._split_index(stage)]

    def head_stages(self, stage: str) -> list[nn.Module]:
        """The stages after `stage` (the part partial fine-tuning trains)."""
        return list(self.feature_stages())[self._split_index(stage) :]

    def trunk(self, pixel_values: torch.Tensor, stage: str) -> torch.Tensor:
        """The feature map after `stage` (inclusive) of patches scaled as for `forward`."""
        x = self.resample(pixel_values)
        for module in self.trunk_stages(stage):
            x = module(x)
        return x

    def forward_from_stage(self, stage_features: torch.Tensor, stage: str) -> torch.Tensor:
        """Pooled features from the output of `stage`: the stages after it, then the pool.

        `forward(pixels) == forward_from_stage(trunk(pixels, stage), stage)` for every stage.
        """
        x = stage_features
        for module in self.head_stages(stage):
            x = module(x)
        return self.pool(x)

    @staticmethod
    def pool(feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pool of an encoder's feature map → (B, num_features)."""
        if feature_map.ndim == 4:  # (B, C, H, W) from CNNs
            return feature_map.mean(dim=(2, 3))
        if feature_map.ndim == 3:  # (B, tokens, C) from ViTs: average the tokens
            return feature_map.mean(dim=1)
        return feature_map


def _forward_features_is(model: nn.Module, stages: nn.Sequential) -> bool:
    """True for timm encoders whose forward_features is exactly `features(x)` (DenseNets)."""
    from timm.models import densenet

    return isinstance(model, densenet.DenseNet) and model.features is stages


def _remove_final_activation(model: nn.Module) -> bool:
    """Make a DenseNet-style encoder end in BatchNorm without ReLU (the reference's features).

    timm's DenseNet ends in `features.norm5`, a BatchNormAct2d whose `act` is a ReLU;
    torchvision's `features` block (used by the reference) stops before that ReLU.
    """
    features = getattr(model, "features", None)
    norm5 = getattr(features, "norm5", None) if features is not None else None
    if norm5 is not None and hasattr(norm5, "act") and not isinstance(norm5.act, nn.Identity):
        norm5.act = nn.Identity()
        return True
    return False


class MclSTExpPreTrainedModel(PreTrainedModel):
    config_class = MclSTExpConfig
    config: MclSTExpConfig
    base_model_prefix = "mclstexp"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The image encoder keeps timm's own initialisation (the transformers default would
        # redraw its convolutions from N(0, 0.02) and silently change the architecture's init).
        if getattr(module, "_mclstexp_encoder_owned", False):
            return
        if isinstance(module, nn.Linear):
            # PyTorch's default Linear init, as the reference model gets.
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1]
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class MclSTExpModel(MclSTExpPreTrainedModel):
    """Image tower + spot tower + projection heads; predicts expression via a `SpotBank`."""

    def __init__(self, config: MclSTExpConfig) -> None:
        super().__init__(config)
        # Build the encoder first so that, under a fixed seed, its initialisation is exactly
        # what `timm.create_model` alone would give.
        self.image_encoder = MclSTExpImageTower(config)
        feature_dim = self.image_encoder.num_features
        if config.image_feature_dim is None:
            config.image_feature_dim = feature_dim
        elif config.image_feature_dim != feature_dim:
            raise ValueError(
                f"MclSTExpConfig.image_feature_dim={config.image_feature_dim} but timm's "
                f"{config.image_encoder!r} gives {feature_dim} features; leave it None to take "
                "timm's value."
            )
        self.image_projection = MclSTExpProjectionHead(
            feature_dim, config.projection_dim, config.dropout
        )
        n_genes = config.n_genes
        if config.has_spot_encoder:
            if config.use_position_embeddings:
                self.x_embed = nn.Embedding(config.max_position, n_genes)
                self.y_embed = nn.Embedding(config.max_position, n_genes)
            self.spot_encoder = nn.ModuleList(
                MclSTExpSpotBlock(
                    n_genes,
                    config.spot_encoder_heads,
                    config.spot_encoder_head_dim,
                    config.spot_mlp_dim,
                    config.dropout,
                )
                for _ in range(config.spot_encoder_layers)
            )
            self.spot_projection = MclSTExpProjectionHead(
                n_genes, config.projection_dim, config.dropout
            )
        self.spot_bank: SpotBank | None = None
        # Optional neighbour searcher over the bank (e.g. a FAISS index for very large banks):
        # any object with `search(queries, k) -> (similarities, indices)` and `len()`.
        self.spot_searcher: Any = None
        self.gradient_checkpointing = False
        self.post_init()

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        # Spot blocks check `self.gradient_checkpointing`; timm encoders have their own switch.
        super()._set_gradient_checkpointing(enable, *args, **kwargs)
        self.gradient_checkpointing = enable
        self.image_encoder.checkpoint_stages = enable
        if hasattr(self.image_encoder.model, "set_grad_checkpointing"):
            self.image_encoder.model.set_grad_checkpointing(enable)

    # ---------------------------------------------------------------- towers
    def get_image_features(
        self,
        pixel_values: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        stage_features: torch.Tensor | None = None,
        feature_stage: str | None = None,
    ) -> MclSTExpImageOutput:
        """Image tower → projection, shaped like CLIP's in transformers 5.

        Pass `pixel_values` (B, 3, H, W) scaled as the image processor does, or, for a frozen
        encoder, its cached pooled `image_features` (B, image_feature_dim), or, for partial
        fine-tuning, the cached feature maps `stage_features` after encoder stage
        `feature_stage` (e.g. DenseNet's 'transition3'; the later stages run here). Returns
        `pooler_output` = projected embeddings (B, projection_dim), `image_features` = pooled
        pre-projection features and `last_hidden_state` = the encoder's feature map (None when
        the features were given).
        """
        given = sum(x is not None for x in (pixel_values, image_features, stage_features))
        if given != 1:
            raise ValueError(
                "get_image_features needs exactly one of pixel_values, image_features or "
                "stage_features."
            )
        if (stage_features is None) != (feature_stage is None):
            raise ValueError("stage_features and feature_stage go together (the maps and the "
                             "encoder stage that produced them).")
        feature_map = None
        if stage_features is not None:
            if not isinstance(stage_features, torch.Tensor) or stage_features.ndim < 3:
                raise ValueError(
                    "stage_features must be a batched feature map (batch, channels, h, w) from "
                    "`image_encoder.trunk(pixels, feature_stage)`; got "
                    f"{getattr(stage_features, 'shape', type(stage_features).__name__)}."
                )
            image_features = self.image_encoder.forward_from_stage(stage_features, feature_stage)
        if pixel_values is not None:
            if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
                raise ValueError(
                    "pixel_values must be a (batch, 3, height, width) float tensor (use "
                    "MclSTExpImageProcessor); got "
                    f"{getattr(pixel_values, 'shape', type(pixel_values).__name__)}."
                )
            if pixel_values.shape[1] != 3:
                raise ValueError(
                    f"pixel_values must have 3 colour channels in dim 1; got shape "
                    f"{tuple(pixel_values.shape)} (channels-last input? permute to (B, 3, H, W))."
                )
            feature_map = self.image_encoder.feature_map(pixel_values)
            image_features = self.image_encoder.pool(feature_map)
        else:
            width = self.config.image_feature_dim
            if not isinstance(image_features, torch.Tensor) or image_features.ndim != 2 or (
                image_features.shape[1] != width
            ):
                raise ValueError(
                    f"image_features must be (batch, {width}) pooled encoder features (as "
                    "`get_image_features(pixel_values).image_features` gives); got "
                    f"{getattr(image_features, 'shape', type(image_features).__name__)}."
                )
            image_features = image_features.to(self.image_projection.linear_in.weight.dtype)
        return MclSTExpImageOutput(
            last_hidden_state=feature_map,
            pooler_output=self.image_projection(image_features),
            image_features=image_features,
        )

    def get_spot_features(self, expression: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B, n_genes) expression + (B, 2) array (x, y) → (B, projection_dim).

        All B spots form one attention sequence, as in training.
        """
        if not self.config.has_spot_encoder:
            raise ValueError(
                "This checkpoint has no spot tower (has_spot_encoder=False, an inference-only "
                "export); it can predict from its spot bank but cannot embed new spots."
            )
        spot_tokens = self._spot_tokens(expression, positions)
        hidden = spot_tokens.unsqueeze(0)  # one sequence: the batch
        for block in self.spot_encoder:
            if self.gradient_checkpointing and self.training:
                hidden = torch.utils.checkpoint.checkpoint(block, hidden, use_reentrant=False)
            else:
                hidden = block(hidden)
        return self.spot_projection(hidden.squeeze(0))

    def _spot_tokens(self, expression: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        n_genes = self.config.n_genes
        if not isinstance(expression, torch.Tensor) or expression.ndim != 2:
            raise ValueError(
                f"expression must be a (batch, {n_genes}) float tensor; got "
                f"{getattr(expression, 'shape', type(expression).__name__)}."
            )
        if expression.shape[1] != n_genes:
            raise ValueError(
                f"expression has {expression.shape[1]} genes but this model was configured "
                f"for {n_genes} (config.gene_names). Preprocess with the model's gene panel."
            )
        tokens = expression.to(self.spot_projection.linear_in.weight.dtype)
        if not self.config.use_position_embeddings:
            return tokens
        if positions is None:
            raise ValueError("positions (batch, 2) array coordinates are required by this model.")
        positions = torch.as_tensor(positions, device=expression.device)
        if positions.ndim != 2 or positions.shape != (expression.shape[0], 2):
            raise ValueError(
                f"positions must be ({expression.shape[0]}, 2) integer array (x, y) coordinates, "
                f"one row per spot; got {tuple(positions.shape)}."
            )
        if positions.is_floating_point():
            if not torch.equal(positions, positions.round()):
                raise ValueError(
                    "positions must be integer array coordinates (spot grid indices), not pixel "
                    "coordinates; round or map them to the grid first."
                )
        positions = positions.long()
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= self.config.max_position:
            raise ValueError(
                f"positions must lie in [0, {self.config.max_position}) (config.max_position); "
                f"got values in [{low}, {high}]."
            )
        return tokens + self.x_embed(positions[:, 0]) + self.y_embed(positions[:, 1])

    def logits_per_spot(self, spot_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, B) contrastive logits: spot i against patch j, over the temperature."""
        return spot_embeds @ image_embeds.T / self.config.contrastive_temperature

    # --------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        return_loss: bool | None = True,
        return_dict: bool | None = True,
        stage_features: torch.Tensor | None = None,
        feature_stage: str | None = None,
        **kwargs: Any,
    ) -> MclSTExpOutput | tuple:
        if kwargs:
            unknown = sorted(k for k in kwargs if k not in {"num_items_in_batch"})
            if unknown:
                raise TypeError(f"MclSTExpModel.forward got unexpected inputs {unknown}.")
        image_embeds = None
        if pixel_values is not None or image_features is not None or stage_features is not None:
            image_embeds = self.get_image_features(
                pixel_values=pixel_values, image_features=image_features,
                stage_features=stage_features, feature_stage=feature_stage,
            ).pooler_output
        spot_embeds = (
            self.get_spot_features(expression, positions) if expression is not None else None
        )
        logits_per_spot = logits_per_image = loss = None
        if image_embeds is not None and spot_embeds is not None:
            logits_per_spot = self.logits_per_spot(spot_embeds, image_embeds)
            logits_per_image = logits_per_spot.T
            if return_loss:
                loss = contrastive_loss(logits_per_spot)
        elif return_loss and (image_embeds is not None or expression is not None):
            if self.training:
                raise ValueError(
                    "The contrastive loss needs pixel_values (or cached image_features) and "
                    "expression (+ positions)."
                )
        output = MclSTExpOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_spot=logits_per_spot,
            image_embeds=image_embeds,
            spot_embeds=spot_embeds,
        )
        return output if return_dict or return_dict is None else output.to_tuple()

    # ------------------------------------------------------------- spot bank
    def attach_spot_bank(self, bank: SpotBank) -> None:
        """Use `bank` for retrieval; refused when genes or embedding width differ."""
        bank.check_compatible(list(self.config.gene_names), self.config.projection_dim)
        self.spot_bank = bank
        self.spot_searcher = None  # an index of another bank must never serve this one

    @torch.no_grad()
    def build_spot_bank(
        self,
        expression: torch.Tensor,
        positions: torch.Tensor | None,
        batch_size: int = DEFAULT_BANK_BATCH_SIZE,
        section_ids: list[str] | None = None,
        patient_ids: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        attach: bool = True,
    ) -> SpotBank:
        """Embed reference spots with the spot tower and (by default) attach them as the bank.

        Batching is fixed and recorded: consecutive runs of `batch_size` spots *in the given
        order* form one attention sequence each (the reference: 32, dataset order).
        """
        expression = torch.as_tensor(expression, dtype=torch.float32)
        if expression.ndim != 2 or expression.shape[0] == 0:
            raise ValueError(
                f"build_spot_bank needs a non-empty (n_spots, n_genes) expression matrix; got "
                f"{tuple(expression.shape)}."
            )
        if positions is not None:
            positions = torch.as_tensor(positions)
        was_training = self.training
        self.eval()
        device = self.device
        chunks = []
        try:
            for start in range(0, expression.shape[0], batch_size):
                expr = expression[start : start + batch_size].to(device)
                pos = positions[start : start + batch_size].to(device) if positions is not None else None
                chunks.append(self.get_spot_features(expr, pos).float().cpu())
        finally:
            self.train(was_training)
        info = {"batching": f"consecutive runs of {batch_size} spots in input order",
                "bank_batch_size": batch_size,
                "expression_transform": self.config.expression_transform,
                "expression_units": self.config.expression_units}
        info.update(metadata or {})
        bank = SpotBank(
            embeddings=torch.cat(chunks),
            expression=expression,
            gene_names=list(self.config.gene_names),
            positions=positions,
            section_ids=list(section_ids or []),
            patient_ids=list(patient_ids or []),
            metadata=info,
        )
        if attach:
            self.attach_spot_bank(bank)
        return bank

    @torch.no_grad()
    def predict_expression(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        k: int | None = None,
        distance: str | None = None,
        weighting: str | None = None,
        chunk_size: int = 65536,
        searcher: Any = None,
    ) -> MclSTExpPrediction:
        """Expression of query patches by retrieval from the attached spot bank.

        Cosine top-k over bank embeddings (exact, or from `searcher`, e.g. a FAISS index of the
        bank), then a weighted average of the neighbours' expression
        (config.retrieval_weighting over config.retrieval_distance by default): `SpotBank.retrieve`.
        """
        if self.spot_bank is None:
            raise ValueError(
                "This model has no spot bank attached, so it can embed images but not predict "
                "expression. Attach one with `model.attach_spot_bank(SpotBank.load(path))`, "
                "build one with `model.build_spot_bank(expression, positions)` or "
                "`mclstexp bank build CKPT --dataset ...`."
            )
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of pixel_values or image_embeds.")
        if image_embeds is None:
            was_training = self.training
            self.eval()
            try:
                image_embeds = self.get_image_features(pixel_values).pooler_output
            finally:
                self.train(was_training)
        queries = image_embeds.detach().float().cpu()
        k = int(k if k is not None else self.config.retrieval_k)
        distance = distance or self.config.retrieval_distance
        weighting = weighting or self.config.retrieval_weighting
        if searcher is None:
            searcher = self.spot_searcher
        expression, indices, weights, spread = self.spot_bank.retrieve(
            queries, k, distance, weighting, chunk_size=chunk_size, searcher=searcher,
            return_neighbour_spread=True,
        )
        return MclSTExpPrediction(
            expression=expression,
            neighbour_indices=indices,
            neighbour_weights=weights,
            image_embeds=queries,
            neighbour_spread=spread,
            spot_neighbour_spread=spread.mean(dim=1) if spread.shape[1] else spread.sum(dim=1),
        )

    # ------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *args: Any,
        image_processor: Any = None,
        **kwargs: Any,
    ):
        """Write a complete, loadable checkpoint: what transformers saves, plus the rest.

        Weights and config (transformers), the spot bank when one is attached, the image
        processor (`image_processor`, else the one matching this config) and the pipeline's
        remote code. transformers' own `push_to_hub` and the Trainer's checkpoints call this
        method, so what they upload or keep is complete too. With `push_to_hub=True` the
        complete folder is pushed afterwards through `push_to_hub` (repo_id, commit_message,
        create_pr, private and token are taken from the keyword arguments).
        """
        from .image_processing_mclstexp import MclSTExpImageProcessor
        from .pipeline_mclstexp import save_pipeline_code

        push = bool(kwargs.pop("push_to_hub", False))
        hub_kwargs = {
            key: kwargs.pop(key)
            for key in ("repo_id", "commit_message", "create_pr", "private")
            if key in kwargs
        }
        result = super().save_pretrained(save_directory, *args, **kwargs)
        is_main_process = kwargs.get("is_main_process", args[0] if args else True)
        if not is_main_process:
            return result
        folder = os.fspath(save_directory)
        if self.spot_bank is not None:
            self.spot_bank.save(os.path.join(folder, SPOT_BANK_FILENAME))
        processor = image_processor or MclSTExpImageProcessor.from_model_config(self.config)
        processor.save_pretrained(folder)
        save_pipeline_code(folder)
        if push:
            repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.normpath(folder)))
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_kwargs)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, **kwargs: Any):
        """Load weights and config, then the spot bank next to them when there is one."""
        load_bank = kwargs.pop("load_spot_bank", True)
        if load_bank and not os.path.isdir(os.fspath(pretrained_model_name_or_path)):
            # One commit for weights and bank, even if the branch moves during the download.
            from transformers.utils.hub import resolve_revision

            kwargs["revision"] = resolve_revision(
                pretrained_model_name_or_path,
                kwargs.get("revision"),
                token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False),
                cache_dir=kwargs.get("cache_dir"),
            )
        local = os.path.isdir(os.fspath(pretrained_model_name_or_path))
        if local:
            check_checkpoint_folder(
                os.path.join(os.fspath(pretrained_model_name_or_path), kwargs.get("subfolder") or "")
            )
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except OSError as exc:
            if local:
                raise
            raise OSError(
                f"{pretrained_model_name_or_path}: cannot load this checkpoint from the Hub or the "
                f"local cache ({' '.join(str(exc).split())[:300]}). Check the repo id and revision, "
                "log in for private repos, or download it while online (it is then reused "
                "offline)."
            ) from exc
        if load_bank:
            bank_path = _resolve_optional_file(pretrained_model_name_or_path, SPOT_BANK_FILENAME, kwargs)
            if bank_path is not None:
                model.attach_spot_bank(SpotBank.load(bank_path))
        return model


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_checkpoint_folder(folder: str | os.PathLike) -> None:
    """Refuse a local folder that is not a loadable mclSTExp checkpoint, naming the file.

    transformers would load a config of another `model_type` into a randomly initialised
    model (only a warning), and reports a corrupt weights file as a bare parser error.
    """
    import json

    folder = os.fspath(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path} not found: {folder} is not a saved checkpoint (save one with "
            "`model.save_pretrained(dir)` or `mclstexp train`)."
        )
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_path}: not valid JSON ({exc}); re-download or re-save the "
                         "checkpoint.") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != MclSTExpConfig.model_type:
        raise ValueError(
            f"{config_path}: model_type {model_type!r} is not an mclSTExp checkpoint "
            f"(expected {MclSTExpConfig.model_type!r}); it would load as a randomly initialised "
            "model. Point --model at an mclSTExp checkpoint."
        )
    weights = [os.path.join(folder, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(folder, n))]
    if not weights:
        raise FileNotFoundError(
            f"{os.path.join(folder, WEIGHT_FILES[0])} not found: the checkpoint in {folder} has no "
            "weights; re-download it or re-save it with `model.save_pretrained(dir)`."
        )
    if weights[0].endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(weights[0], framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"{weights[0]}: unreadable weights ({exc}); the file is truncated or corrupt — "
                "re-download or re-save the checkpoint."
            ) from None


def _resolve_optional_file(name_or_path, filename: str, kwargs: dict[str, Any]) -> str | None:
    """Local path or Hub-cached copy of an optional checkpoint file; None when absent."""
    name_or_path = os.fspath(name_or_path)
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, kwargs.get("subfolder", "") or "", filename)
        return path if os.path.isfile(path) else None
    from transformers.utils import cached_file

    return cached_file(
        name_or_path,
        filename,
        cache_dir=kwargs.get("cache_dir"),
        force_download=kwargs.get("force_download", False),
        proxies=kwargs.get("proxies"),
        local_files_only=kwargs.get("local_files_only", False),
        token=kwargs.get("token"),
        revision=kwargs.get("revision"),
        subfolder=kwargs.get("subfolder", "") or "",
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def contrastive_loss(logits_per_spot: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy with identity targets: mean of spot→image and image→spot."""
    targets = torch.arange(logits_per_spot.shape[0], device=logits_per_spot.device)
    spot_loss = F.cross_entropy(logits_per_spot, targets)
    image_loss = F.cross_entropy(logits_per_spot.T, targets)
    return (spot_loss + image_loss) / 2.0


__all__ = [
    "MclSTExpModel",
    "MclSTExpPreTrainedModel",
    "MclSTExpImageOutput",
    "MclSTExpOutput",
    "MclSTExpPrediction",
    "check_checkpoint_folder",
    "contrastive_loss",
    "DEFAULT_BANK_BATCH_SIZE",
]
