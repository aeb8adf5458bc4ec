"""Types of loaded language models: one model with its provenance, an SLM/LLM pair, the load error.

Kept apart from :mod:`hlm_gym.lm.models` (which resolves specs and reads weights) so that the
modules that *build* a model, such as :mod:`hlm_gym.lm.slm`, can return these types without
importing the loader that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hlm_gym.errors import HLMGymError

if TYPE_CHECKING:  # transformers is imported by whoever loads a model, not by these types
    from transformers import PreTrainedModel


class ModelLoadError(HLMGymError, ValueError):
    """A model spec could not be resolved or loaded, or a pair is inconsistent."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and provenance."""

    model: PreTrainedModel
    tokenizer: object
    spec: str
    name: str
    fingerprint: str


def output_size(model) -> int:
    """Number of logits a causal LM returns per position (a trimmed draft head still returns all)."""
    head = model.get_output_embeddings()
    return int(getattr(head, "vocab_size", None) or head.weight.shape[0])


@dataclass
class ModelPair:
    """An SLM (device) and an LLM (base station) that share one tokenizer."""

    slm: PreTrainedModel
    llm: PreTrainedModel
    tokenizer: object
    slm_name: str
    llm_name: str
    slm_fingerprint: str
    llm_fingerprint: str

    @property
    def vocab_size(self) -> int:
        """Size of the output distribution (the LM head's rows)."""
        return output_size(self.llm)

    @property
    def device(self) -> torch.device:
        """The device the LLM lives on."""
        return next(self.llm.parameters()).device
