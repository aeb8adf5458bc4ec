"""The embedded on-device SLM: a pruned copy of the embedded LLM plus a shipped low-rank delta.

The artifact lives in ``hlm_gym/data/slm/`` (built by ``hlm-gym slm build``):

* ``slm.json``: the teacher layer indices, adapter rank and alpha, the kept MLP width
  (``"mlp_width"``) and vocabulary size (``"vocab"``) when pruned, the SHA-256 of the LLM's
  GGUF file it was distilled from, a training summary, and an acceptance figure measured
  at build time on a small fixed batch (:func:`check_batch`) for regression tests;
* ``slm.safetensors``: float16 low-rank adapters ``A`` (``r x in``) and ``B`` (``out x r``)
  of every linear map of the kept layers, the student's RMSNorm weights and (format 2) the
  indices of the kept MLP neurons of each layer (``mlp.kept``) and of the kept tokens of a
  trimmed draft head (``lm_head.ids``).

:func:`embedded_slm_from_llm` deep-copies the kept layers of an *already loaded* LLM, keeps
their listed MLP neurons, merges
``W + (alpha/r) B A`` into them (so the SLM costs no more FLOPs than the bare layers) and
shares the token embeddings (and, unless the head is trimmed, the LM head) with the LLM, so
the LLM's weights are read once. A trimmed head holds a copy of the kept rows of the LLM's
head and returns full-vocabulary logits, with a large negative value outside the kept set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from hlm_gym.lm.acceptance import acceptance_on
from hlm_gym.lm.chat_examples import encode_example, eval_prompts
from hlm_gym.lm.model_types import LoadedModel, ModelLoadError
from hlm_gym.lm.student import DistillError, build_student, merge_student
from hlm_gym.paths import data_dir

ARTIFACT_JSON = "slm.json"
ARTIFACT_WEIGHTS = "slm.safetensors"
ARTIFACT_FORMAT = 2
SUPPORTED_FORMATS = (1, 2)  # 1: full LM head; 2: adds an optional trimmed head ("vocab")
VOCAB_KEY = "lm_head.ids"  # kept-vocabulary ids of a trimmed head, in the weights file
MLP_KEY = "mlp.kept"  # (n_layers, width) kept MLP neurons of each student layer, in the weights file


def artifact_dir() -> Path:
    """Folder of the shipped SLM artifact (``hlm_gym/data/slm``)."""
    return data_dir() / "slm"


def read_artifact_config(folder: str | Path | None = None) -> dict:
    """The parsed ``slm.json`` of an artifact folder (default: the shipped one)."""
    folder = Path(folder) if folder is not None else artifact_dir()
    cfg_path, w_path = folder / ARTIFACT_JSON, folder / ARTIFACT_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ModelLoadError(
                f"SLM artifact file {p} is missing; rebuild it with 'hlm-gym slm build' or "
                "use --slm early-exit:N"
            )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"SLM artifact config {cfg_path} is not valid JSON: {exc.msg}") from None
    for key in ("layers", "rank", "alpha", "base_sha256"):
        if key not in cfg:
            raise ModelLoadError(f"SLM artifact config {cfg_path} lacks {key!r}")
    if cfg.get("format") not in SUPPORTED_FORMATS:
        raise ModelLoadError(f"SLM artifact {cfg_path} has format {cfg.get('format')!r}; this version "
                             f"of hlm-gym reads formats {list(SUPPORTED_FORMATS)}")
    for key in ("vocab", "mlp_width"):
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ModelLoadError(f"SLM artifact config {cfg_path}: {key!r} must be a positive integer "
                                 f"or null, got {value!r}")
    return cfg


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_delta(llm: LoadedModel, folder: str | Path | None = None, check_base: bool = True):
    """The checked contents of the artifact in ``folder`` (default: shipped), for the LLM ``llm``.

    Returns ``(config, delta, vocab_ids, mlp_keep, weights_sha256)``: the parsed ``slm.json``,
    the trainable tensors (adapters and norms) by parameter name, the kept-vocabulary ids and
    kept MLP neurons (None when not pruned) and the SHA-256 of the weights file.
    """
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else artifact_dir()
    cfg = read_artifact_config(folder)
    if check_base and cfg["base_sha256"] != llm.fingerprint:
        raise ModelLoadError(
            f"the SLM delta in {folder} was distilled from LLM {cfg['base_sha256'][:12]}..., "
            f"but the loaded LLM is {llm.fingerprint[:12]}... ({llm.name})"
        )
    w_path = folder / ARTIFACT_WEIGHTS
    w_sha = _sha256(w_path)
    want = cfg.get("weights_sha256")
    if want is not None and want != w_sha:
        raise ModelLoadError(
            f"SLM artifact {folder}: {ARTIFACT_WEIGHTS} (sha256 {w_sha[:12]}...) is not the file {ARTIFACT_JSON} "
            f"was exported with ({str(want)[:12]}...); an export was interrupted or the files were mixed: export "
            "again ('hlm-gym slm build --export-only --out RUN --export FOLDER')"
        )
    try:
        delta = load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"cannot read SLM weights {w_path}: {exc}") from None
    vocab_ids = delta.pop(VOCAB_KEY, None)
    if (vocab_ids is None) != (cfg.get("vocab") is None) or (
            vocab_ids is not None and vocab_ids.numel() != cfg["vocab"]):
        raise ModelLoadError(f"SLM artifact {folder}: config 'vocab' is {cfg.get('vocab')!r} but "
                             f"{w_path.name} holds {0 if vocab_ids is None else vocab_ids.numel()} "
                             f"kept-vocabulary ids ({VOCAB_KEY!r})")
    mlp_keep = delta.pop(MLP_KEY, None)
    width = cfg.get("mlp_width")
    if (mlp_keep is None) != (width is None) or (
            mlp_keep is not None and (mlp_keep.ndim != 2 or mlp_keep.shape[1] != width)):
        raise ModelLoadError(f"SLM artifact {folder}: config 'mlp_width' is {width!r} but "
                             f"{w_path.name} holds kept MLP neurons of shape "
                             f"{None if mlp_keep is None else tuple(mlp_keep.shape)} ({MLP_KEY!r})")
    return cfg, delta, vocab_ids, mlp_keep, w_sha


def student_from_delta(llm_model, folder: Path, cfg: dict, delta: dict, vocab_ids, mlp_keep):
    """The (unmerged) student of an artifact's contents (see :func:`read_delta`), adapters loaded, float32."""
    try:
        student = build_student(llm_model, [int(i) for i in cfg["layers"]], int(cfg["rank"]),
                                float(cfg["alpha"]), seed=0, vocab_ids=vocab_ids, mlp_keep=mlp_keep)
    except DistillError as exc:
        raise ModelLoadError(f"bad SLM artifact {folder}: {exc}") from None
    own = dict(student.named_parameters())
    trainable = {n for n, p in own.items() if p.requires_grad}
    if set(delta) != trainable:
        missing, extra = sorted(trainable - set(delta)), sorted(set(delta) - trainable)
        raise ModelLoadError(f"SLM weights {Path(folder) / ARTIFACT_WEIGHTS} do not match its config "
                             f"(missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for name, tensor in delta.items():
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ModelLoadError(f"SLM weight {name} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(own[name].shape)}")
            own[name].copy_(tensor.to(device=own[name].device, dtype=torch.float32))
    return student


def slm_from_delta(llm: LoadedModel, folder: str | Path | None = None, check_base: bool = True) -> LoadedModel:
    """Build the SLM of the artifact in ``folder`` (default: shipped) on top of ``llm``."""
    folder = Path(folder) if folder is not None else artifact_dir()
    cfg, delta, vocab_ids, mlp_keep, w_sha = read_delta(llm, folder, check_base)
    student = student_from_delta(llm.model, folder, cfg, delta, vocab_ids, mlp_keep)
    device = next(llm.model.parameters()).device
    dtype = next(llm.model.parameters()).dtype
    merge_student(student)
    student = student.to(device=device, dtype=dtype).eval()
    # share embeddings/LM head again after the dtype move (to() keeps shared modules shared)
    n = len(cfg["layers"])
    return LoadedModel(student, llm.tokenizer, "embedded-slm",
                       f"SmolLM2-135M distilled {n}-layer SLM", w_sha)


def embedded_slm_from_llm(llm: LoadedModel) -> LoadedModel:
    """Build the shipped SLM on top of an already loaded embedded LLM."""
    return slm_from_delta(llm)


# ----------------------------------------------------------------------------- check batch
CHECK_PROMPTS = 4
CHECK_TOKENS = 64


def check_batch(tokenizer, n_prompts: int = CHECK_PROMPTS,
                max_tokens: int = CHECK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """A small fixed batch: the first ShareGPT *validation* turns, prompt + reference reply.

    Returns ``(ids, mask)`` of shape ``(n, max_tokens)``; ``mask`` marks the positions that
    predict a reply token. Only examples at least ``max_tokens`` long are used (no padding).
    """
    rows, masks = [], []
    for prompt in eval_prompts():
        enc = encode_example(tokenizer, prompt, max_prompt_tokens=max_tokens // 2,
                              max_reply_tokens=max_tokens)
        if enc is None or len(enc[0]) < max_tokens:
            continue
        rows.append(enc[0][:max_tokens])
        m = enc[1][:max_tokens]
        m[-1] = 0
        masks.append(m)
        if len(rows) == n_prompts:
            break
    return torch.tensor(rows), torch.tensor(masks, dtype=torch.bool)


def check_acceptance(llm_model, slm_model, tokenizer) -> dict:
    """Acceptance and greedy agreement of an SLM/LLM pair on :func:`check_batch`."""
    ids, mask = check_batch(tokenizer)
    dev = next(llm_model.parameters()).device
    acc, agree, n = acceptance_on(llm_model, slm_model, ids.to(dev), mask.to(dev))
    return {"acceptance": acc, "greedy_agreement": agree, "positions": n,
            "n_prompts": int(ids.shape[0]), "max_tokens": int(ids.shape[1])}
