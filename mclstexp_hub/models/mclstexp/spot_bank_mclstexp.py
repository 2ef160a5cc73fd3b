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

from .retrieval_mclstexp import (
    BANK_FORMAT,
    SPOT_BANK_FILENAME,
    check_bank_arrays,
    check_bank_serves,
    check_k,
    cosine_topk,
    neighbour_weights,
    read_spot_bank_file,
    retrieve_arrays,
    spot_bank_path,
)
from .retrieval_mclstexp import RETRIEVAL_DISTANCES as DISTANCES
from .retrieval_mclstexp import RETRIEVAL_WEIGHTINGS as WEIGHTINGS

BANK_FORMAT_VERSION = "1"


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
        # on the CPU: retrieval runs in NumPy (retrieval_mclstexp)
        self.embeddings = torch.as_tensor(self.embeddings, dtype=torch.float32).cpu().contiguous()
        self.expression = torch.as_tensor(self.expression, dtype=torch.float32).cpu().contiguous()
        if self.positions is not None:
            self.positions = torch.as_tensor(self.positions, dtype=torch.int64).cpu()
        check_bank_arrays(self.embeddings.numpy(), self.expression.numpy(), self.gene_names,
                          None if self.positions is None else self.positions.numpy(),
                          self.section_ids, self.patient_ids)
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

        path = spot_bank_path(path)
        tensors = {"embeddings": self.embeddings, "expression": self.expression}
        if self.positions is not None:
            tensors["positions"] = self.positions.contiguous()
        header = {
            "format": BANK_FORMAT,
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
        return cls(**read_spot_bank_file(path, framework="pt"))

    # ---------------------------------------------------------------- checks
    def check_compatible(self, gene_names: list[str], embedding_dim: int) -> None:
        """Refuse a bank that cannot serve a model: genes or embedding width differ."""
        check_bank_serves(self.gene_names, self.embedding_dim, gene_names, embedding_dim)

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
        or from precomputed `indices`. Weights and the weighted mean are computed in bounded
        query blocks (`retrieve_arrays`), so the gathered neighbours never grow with Q.
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
        if indices is not None:  # else exact cosine top-k inside retrieve_arrays
            indices = torch.as_tensor(indices, dtype=torch.int64).cpu().numpy()
        out = retrieve_arrays(queries.detach().cpu().numpy(), self.embeddings.numpy(),
                              self.expression.numpy(), k, distance, weighting, indices=indices,
                              return_neighbour_spread=return_neighbour_spread,
                              chunk_size=chunk_size)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in out)

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


_check_k = check_k


def exact_cosine_topk(
    queries: torch.Tensor, bank: torch.Tensor, k: int, chunk_size: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-k of each query over `bank`, scanning the bank in chunks (tensors in, out)."""
    sims, idx = cosine_topk(_array(queries), _array(bank), k, chunk_size=chunk_size)
    return torch.from_numpy(sims), torch.from_numpy(idx)


def retrieval_weights(
    queries: torch.Tensor, neighbours: torch.Tensor, distance: str, weighting: str
) -> torch.Tensor:
    """Weights (Q, k) summing to 1 from query (Q, D) to its neighbours (Q, k, D) (tensors)."""
    return torch.from_numpy(neighbour_weights(_array(queries), _array(neighbours), distance,
                                              weighting))


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def bank_to_numpy(bank: SpotBank) -> dict[str, np.ndarray]:
    """Plain arrays, for users who want to inspect or export a bank."""
    out = {"embeddings": bank.embeddings.numpy(), "expression": bank.expression.numpy()}
    if bank.positions is not None:
        out["positions"] = bank.positions.numpy()
    return out
