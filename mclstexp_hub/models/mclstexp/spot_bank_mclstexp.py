"""The spot bank: reference spot embeddings + their expression, and retrieval over it.

mclSTExp predicts by *retrieval*: a query patch is embedded by the image tower, the most
similar reference spots (embedded by the spot tower) are found by cosine similarity, and their
measured expression is averaged with weights from the embedding distance. The bank is the
model's memory of real spot profiles, so it travels with the checkpoint
(`spot_bank.safetensors`).

This module is Hub-bound remote code: it imports only third-party packages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SPOT_BANK_FILENAME = "spot_bank.safetensors"
BANK_FORMAT_VERSION = "1"

from .configuration_mclstexp import RETRIEVAL_DISTANCES as DISTANCES  # noqa: E402
from .configuration_mclstexp import RETRIEVAL_WEIGHTINGS as WEIGHTINGS  # noqa: E402

# A spot whose embedding equals the query exactly would get weight 1/0; distances are floored
# at this value so such a spot dominates the average instead of producing inf/NaN.
_MIN_DISTANCE = 1e-8
# Queries handled at once when turning neighbours into weights (bounds peak memory).
QUERY_BLOCK = 1024


@dataclass
class SpotBank:
    """Reference spots for retrieval.

    `embeddings` are the spot tower's outputs (unnormalised, as the reference uses them for
    distances), `expression` the preprocessed expression in the units named in `metadata`.
    """

    embeddings: torch.Tensor  # (N, D) float32
    expression: torch.Tensor  # (N, G) float32
    gene_names: list[str]
    positions: torch.Tensor | None = None  # (N, 2) int64 array coordinates
    section_ids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.embeddings = torch.as_tensor(self.embeddings, dtype=torch.float32).contiguous()
        self.expression = torch.as_tensor(self.expression, dtype=torch.float32).contiguous()
        if self.embeddings.ndim != 2 or self.expression.ndim != 2:
            raise ValueError(
                "SpotBank: `embeddings` must be (n_spots, dim) and `expression` "
                f"(n_spots, n_genes); got {tuple(self.embeddings.shape)} and "
                f"{tuple(self.expression.shape)}."
            )
        n = self.embeddings.shape[0]
        if n == 0:
            raise ValueError("SpotBank: the bank is empty; build it from at least one spot.")
        if self.expression.shape[0] != n:
            raise ValueError(
                f"SpotBank: {n} embeddings but {self.expression.shape[0]} expression rows; "
                "both must describe the same spots in the same order."
            )
        if len(self.gene_names) != self.expression.shape[1]:
            raise ValueError(
                f"SpotBank: {len(self.gene_names)} gene names for "
                f"{self.expression.shape[1]} expression columns."
            )
        if not torch.isfinite(self.expression).all() or not torch.isfinite(self.embeddings).all():
            raise ValueError("SpotBank: embeddings/expression contain NaN or inf values.")
        if self.positions is not None:
            self.positions = torch.as_tensor(self.positions, dtype=torch.int64)
            if tuple(self.positions.shape) != (n, 2):
                raise ValueError(
                    f"SpotBank: `positions` must be ({n}, 2); got {tuple(self.positions.shape)}."
                )
        for name in ("section_ids", "patient_ids"):
            values = getattr(self, name)
            if values and len(values) != n:
                raise ValueError(f"SpotBank: `{name}` has {len(values)} entries for {n} spots.")
        self.gene_names = [str(g) for g in self.gene_names]

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def n_genes(self) -> int:
        return int(self.expression.shape[1])

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> str:
        """Write the bank as one safetensors file (tensors + JSON metadata); atomic."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, SPOT_BANK_FILENAME)
        tensors = {"embeddings": self.embeddings, "expression": self.expression}
        if self.positions is not None:
            tensors["positions"] = self.positions.contiguous()
        header = {
            "format": "mclstexp-spot-bank",
            "format_version": BANK_FORMAT_VERSION,
            "gene_names": json.dumps(self.gene_names),
            "section_ids": json.dumps(list(self.section_ids)),
            "patient_ids": json.dumps(list(self.patient_ids)),
            "metadata": json.dumps(self.metadata, default=str),
        }
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            save_file(tensors, tmp, metadata=header)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpotBank:
        from safetensors import safe_open

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, SPOT_BANK_FILENAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No spot bank at {path}. Build one with `mclstexp bank build CKPT --dataset ...` "
                "or `model.attach_spot_bank(SpotBank(...))`."
            )
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several error types
            raise ValueError(f"{path} is not a readable safetensors spot bank: {exc}") from exc
        if header.get("format") != "mclstexp-spot-bank":
            raise ValueError(
                f"{path} is a safetensors file but not an mclstexp spot bank "
                "(its metadata lacks format=mclstexp-spot-bank)."
            )
        return cls(
            embeddings=tensors["embeddings"],
            expression=tensors["expression"],
            positions=tensors.get("positions"),
            gene_names=json.loads(header["gene_names"]),
            section_ids=json.loads(header.get("section_ids", "[]")),
            patient_ids=json.loads(header.get("patient_ids", "[]")),
            metadata=json.loads(header.get("metadata", "{}")),
        )

    # ---------------------------------------------------------------- checks
    def check_compatible(self, gene_names: list[str], embedding_dim: int) -> None:
        """Refuse a bank that cannot serve a model: genes or embedding width differ."""
        if list(gene_names) != self.gene_names:
            model_genes = list(gene_names)
            first = next(
                (i for i, (m, b) in enumerate(zip(model_genes, self.gene_names)) if m != b),
                min(len(model_genes), len(self.gene_names)),
            )
            model_at = model_genes[first] if first < len(model_genes) else "<end>"
            bank_at = self.gene_names[first] if first < len(self.gene_names) else "<end>"
            raise ValueError(
                "Spot bank genes do not match the model's `gene_names`: model has "
                f"{len(model_genes)} genes, bank has {len(self.gene_names)}; first difference "
                f"at position {first}: model {model_at!r}, bank {bank_at!r}. Build the bank "
                "from data preprocessed with the model's gene panel."
            )
        if embedding_dim != self.embedding_dim:
            raise ValueError(
                f"Spot bank embedding width {self.embedding_dim} does not match the model's "
                f"projection_dim {embedding_dim}. Rebuild the bank with this model "
                "(`mclstexp bank build`)."
            )

    # ------------------------------------------------------------- retrieval
    def search(
        self,
        queries: torch.Tensor,
        k: int,
        chunk_size: int = 65536,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact cosine top-k. Returns (similarities, indices), each (Q, k).

        The bank is scanned in chunks of `chunk_size` rows with a running top-k, so peak memory
        is O(Q * (chunk_size + k)) however large the bank is.
        """
        return exact_cosine_topk(queries, self.embeddings, k, chunk_size=chunk_size)

    def retrieve(
        self,
        queries: torch.Tensor,
        k: int,
        distance: str = "l1",
        weighting: str = "inverse_square",
        chunk_size: int = 65536,
        searcher: Any = None,
        indices: torch.Tensor | None = None,
        return_neighbour_spread: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """The one retrieval loop: (expression (Q, G), neighbour indices (Q, k), weights (Q, k)).

        With `return_neighbour_spread` a 4th value follows: the weighted standard deviation (Q, G)
        of the k neighbours' expression around the prediction, with the retrieval weights
        (sqrt(sum_k w_k (x_kg - pred_g)^2)); exactly zero when all neighbours agree. It is computed in
        the same query blocks, from the same gathered neighbour expression.

        Neighbours come from exact chunked cosine search, from `searcher` (any object with
        `search(queries, k) -> (similarities, indices)`, e.g. a FAISS index built from this bank)
        or from precomputed `indices`. Weights and the weighted mean are computed here, in
        query blocks of `QUERY_BLOCK`, so the (Q, k, D) neighbour tensor stays bounded.
        """
        queries = torch.as_tensor(queries, dtype=torch.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embedding_dim:
            raise ValueError(
                f"Query embeddings must be (n, {self.embedding_dim}); got {tuple(queries.shape)}."
            )
        if indices is None:
            if searcher is not None:
                n_index, dim = len(searcher), getattr(searcher, "dim", self.embedding_dim)
                if n_index != len(self) or dim != self.embedding_dim:
                    raise ValueError(
                        f"The index ({n_index} spots, dim {dim}) was not built from this bank "
                        f"({len(self)} spots, dim {self.embedding_dim}); rebuild it from the bank."
                    )
                _check_k(k, len(self))
                _, indices = searcher.search(queries, k)
            else:
                _, indices = self.search(queries, k, chunk_size=chunk_size)
        indices = torch.as_tensor(indices, dtype=torch.int64)
        weight_blocks, expression_blocks, spread_blocks = [], [], []
        for start in range(0, queries.shape[0], QUERY_BLOCK):
            q = queries[start : start + QUERY_BLOCK]
            idx = indices[start : start + QUERY_BLOCK]
            w = retrieval_weights(q, self.embeddings[idx], distance, weighting)
            weight_blocks.append(w)
            neighbours = self.expression[idx]  # (q, k, G)
            mean = torch.einsum("qk,qkg->qg", w, neighbours)
            expression_blocks.append(mean)
            if return_neighbour_spread:
                # Shifted by the first neighbour (exactly 0 when all neighbours agree, which a
                # weighted mean with float weights summing to 1 ± eps is not).
                shifted = neighbours - neighbours[:, :1, :]  # new tensor; the bank is untouched
                m1 = torch.einsum("qk,qkg->qg", w, shifted)
                m2 = torch.einsum("qk,qkg->qg", w, shifted.square_())
                spread_blocks.append((m2 - m1.square()).clamp_min_(0.0).sqrt_())
        if not weight_blocks:
            empty = torch.empty(0, indices.shape[1] if indices.ndim == 2 else k)
            out = (torch.empty(0, self.n_genes), indices.reshape(0, empty.shape[1]), empty)
            return (*out, torch.empty(0, self.n_genes)) if return_neighbour_spread else out
        out = (torch.cat(expression_blocks), indices, torch.cat(weight_blocks))
        return (*out, torch.cat(spread_blocks)) if return_neighbour_spread else out

    def predict(
        self,
        queries: torch.Tensor,
        k: int,
        distance: str = "l1",
        weighting: str = "inverse_square",
        chunk_size: int = 65536,
        indices: torch.Tensor | None = None,
        searcher: Any = None,
    ) -> torch.Tensor:
        """Predicted expression (Q, G) for image embeddings `queries` (Q, D) (see `retrieve`)."""
        return self.retrieve(queries, k, distance, weighting, chunk_size, searcher, indices)[0]


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"retrieval_k must be a positive integer; got {k!r}.")
    if k > n:
        raise ValueError(
            f"retrieval_k={k} is larger than the spot bank ({n} spots). Use k <= {n} "
            "(e.g. `model.config.retrieval_k = ...`) or a larger bank."
        )


def exact_cosine_topk(
    queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of each query over `bank`, scanning the bank in chunks."""
    _check_k(k, bank.shape[0])
    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=-1)
    best_sim: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, bank.shape[0], chunk_size):
        chunk = torch.nn.functional.normalize(bank[start : start + chunk_size].float(), dim=-1)
        sim = q @ chunk.T
        kk = min(k, sim.shape[1])
        s, i = sim.topk(kk, dim=1)
        i = i + start
        if best_sim is None:
            best_sim, best_idx = s, i
        else:
            s = torch.cat([best_sim, s], dim=1)
            i = torch.cat([best_idx, i], dim=1)
            best_sim, order = s.topk(min(k, s.shape[1]), dim=1)
            best_idx = i.gather(1, order)
    assert best_sim is not None and best_idx is not None
    return best_sim, best_idx


def retrieval_weights(
    queries: torch.Tensor, neighbours: torch.Tensor, distance: str, weighting: str
) -> torch.Tensor:
    """Weights (Q, k) summing to 1 from query (Q, D) to its neighbours (Q, k, D).

    inverse_square: w ∝ 1/d² (the paper; the reference code uses L1 d);
    mean: uniform (BLEEP); softmax: w ∝ exp(-d).
    """
    if distance not in DISTANCES:
        raise ValueError(f"retrieval distance must be one of {DISTANCES}; got {distance!r}.")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"retrieval weighting must be one of {WEIGHTINGS}; got {weighting!r}.")
    k = neighbours.shape[1]
    if weighting == "mean":
        return torch.full(neighbours.shape[:2], 1.0 / k, dtype=torch.float32)
    diff = neighbours.double() - queries.double()[:, None, :]
    if distance == "l1":
        d = diff.abs().sum(-1)
    elif distance == "l2":
        d = diff.pow(2).sum(-1).sqrt()
    else:
        qn = torch.nn.functional.normalize(queries.double(), dim=-1)
        nn_ = torch.nn.functional.normalize(neighbours.double(), dim=-1)
        d = 1.0 - torch.einsum("qd,qkd->qk", qn, nn_)
    if weighting == "inverse_square":
        w = 1.0 / d.clamp_min(_MIN_DISTANCE).pow(2)
        w = w / w.sum(dim=1, keepdim=True)
    else:
        w = torch.softmax(-d, dim=1)
    return w.float()


def bank_to_numpy(bank: SpotBank) -> dict[str, np.ndarray]:
    """Plain arrays, for users who want to inspect or export a bank."""
    out = {"embeddings": bank.embeddings.numpy(), "expression": bank.expression.numpy()}
    if bank.positions is not None:
        out["positions"] = bank.positions.numpy()
    return out
