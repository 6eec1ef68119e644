"""A FAISS inner-product index for galleries too large for a dense similarity matrix.

``index_type="flat"`` (``IndexFlatIP``) is exact and is what :func:`retrieval_recall` uses, so recall is identical to
the dense path. ``"ivf"`` (``IndexIVFFlat``, inner product) is approximate and meant for serving very large
catalogues (e.g. the demo); ``"auto"`` picks IVF from ``ivf_threshold`` items on. Vectors are stored as given:
L2-normalise them first (``normalize=True`` does it) for cosine similarity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch


def _faiss():
    try:
        import faiss
    except ImportError as err:  # pragma: no cover - faiss is a test dependency
        raise ImportError("EmbeddingIndex needs faiss: pip install faiss-cpu (or faiss-gpu).") from err
    return faiss


def _as_f32(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, dim), got shape {x.shape}.")
    return x


class EmbeddingIndex:
    """Inner-product nearest-neighbour index over embeddings, with optional integer ids, saved to / loaded from disk.

    Args:
        dim: embedding size.
        index_type: ``"flat"`` (exact), ``"ivf"`` (approximate, needs training data: the first ``add``), or
            ``"auto"`` (decided at the first ``add``: IVF from ``ivf_threshold`` vectors on).
        nlist: IVF cells (default ``4 * sqrt(n)``, at most n / 39 so every cell has training points).
        nprobe: IVF cells visited per query (more = slower, closer to exact).
        normalize: L2-normalise vectors on ``add`` and queries on ``search`` (cosine similarity).
        ivf_threshold: size from which ``"auto"`` picks IVF.
    """

    def __init__(
        self,
        dim: int,
        index_type: Literal["flat", "ivf", "auto"] = "flat",
        nlist: int | None = None,
        nprobe: int = 16,
        normalize: bool = False,
        ivf_threshold: int = 1_000_000,
    ):
        if index_type not in ("flat", "ivf", "auto"):
            raise ValueError(f"index_type must be 'flat', 'ivf' or 'auto', got {index_type!r}.")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}.")
        self.dim = int(dim)
        self.index_type = index_type
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.normalize = normalize
        self.ivf_threshold = int(ivf_threshold)
        self._index = None

    # -- building ---------------------------------------------------------------------------------------------
    @classmethod
    def from_embeddings(cls, embeddings: Any, ids: Any | None = None, **kwargs) -> EmbeddingIndex:
        """Build an index over ``embeddings`` (N, dim) with optional int64 ``ids`` (default 0..N-1)."""
        emb = _as_f32(embeddings, "embeddings")
        index = cls(emb.shape[1], **kwargs)
        index.add(emb, ids)
        return index

    def _build(self, vectors: np.ndarray) -> None:
        faiss = _faiss()
        kind = self.index_type
        if kind == "auto":
            kind = "ivf" if len(vectors) >= self.ivf_threshold else "flat"
        if kind == "flat":
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        else:
            n = len(vectors)
            nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            if n < nlist:
                raise ValueError(f"an IVF index with nlist={nlist} needs at least {nlist} training vectors, got {n}.")
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.train(vectors)
            ivf.nprobe = self.nprobe
            self._index = ivf
        self.resolved_type = kind

    def add(self, embeddings: Any, ids: Any | None = None) -> None:
        """Add vectors (N, dim) with optional int64 ids (default: continuing 0, 1, 2, ...)."""
        vec = _as_f32(embeddings, "embeddings")
        if vec.shape[1] != self.dim:
            raise ValueError(f"embeddings have dim {vec.shape[1]}, the index has dim {self.dim}.")
        if len(vec) == 0:
            raise ValueError("cannot add an empty set of embeddings.")
        if self.normalize:
            vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        if ids is None:
            ids = np.arange(len(self), len(self) + len(vec), dtype=np.int64)
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) != len(vec):
            raise ValueError(f"{len(ids)} ids for {len(vec)} embeddings; pass one id per row.")
        if self._index is None:
            self._build(vec)
        self._index.add_with_ids(vec, ids)

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    # -- querying ---------------------------------------------------------------------------------------------
    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery items per query: ``(scores, ids)``, both (Q, k), best first (scores float32, ids int64)."""
        q = _as_f32(queries, "queries")
        if len(self) == 0:
            raise ValueError("the index is empty: add embeddings before searching.")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dim {q.shape[1]}, the index has dim {self.dim}.")
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be between 1 and the index size {len(self)}.")
        if self.normalize:
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        scores, ids = self._index.search(q, k)
        return scores, ids

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``index.faiss`` and ``index_config.json`` into the folder ``path`` (created)."""
        if self._index is None:
            raise ValueError("the index is empty: nothing to save.")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self._index, str(folder / "index.faiss"))
        meta = {
            "dim": self.dim,
            "index_type": self.index_type,
            "resolved_type": self.resolved_type,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "normalize": self.normalize,
            "ivf_threshold": self.ivf_threshold,
            "ntotal": len(self),
        }
        (folder / "index_config.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        """Load an index written by :meth:`save`."""
        folder = Path(path)
        if not (folder / "index.faiss").is_file() or not (folder / "index_config.json").is_file():
            raise FileNotFoundError(f"{folder} has no index.faiss / index_config.json; save one with .save(folder).")
        meta = json.loads((folder / "index_config.json").read_text())
        index = cls(
            meta["dim"],
            index_type=meta["index_type"],
            nlist=meta["nlist"],
            nprobe=meta["nprobe"],
            normalize=meta["normalize"],
            ivf_threshold=meta["ivf_threshold"],
        )
        index._index = _faiss().read_index(str(folder / "index.faiss"))
        index.resolved_type = meta["resolved_type"]
        if index.resolved_type == "ivf":
            index._index.nprobe = index.nprobe
        return index
