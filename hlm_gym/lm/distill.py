"""Distilling the on-device SLM from the embedded LLM (``hlm-gym slm build``).

Recipe
------
* **Student** (the architecture is :mod:`hlm_gym.lm.student`, shared with the loader
  :mod:`hlm_gym.lm.slm`): decoder layers chosen from the 30 of SmolLM2-135M-Instruct (default: all 30),
  *deep-copied* so the teacher stays intact, and made cheaper in two ways:

  - **MLP width pruning** (``mlp_width``, default 576 of 1536 neurons per layer): each layer
    keeps the neurons with the largest ``E|silu(gate(x)) * up(x)| * ||W_down[:, j]||`` on a few
    training rows (:func:`mlp_importance`), as in structured width pruning (Minitron);
  - a **trimmed LM head** (``vocab``, default the 8192 most frequent training tokens plus the
    special tokens): :class:`TrimmedLMHead`, as in VocabTrim for speculative-decoding drafters.
    Tokens outside the kept set get draft probability 0 (the LLM still verifies and resamples
    them).

  Token embeddings are shared with the teacher and frozen; the student has its own copy of
  the final RMSNorm.
* **Trainable delta**: low-rank adapters ``W + (alpha/r) B A`` on every linear map of the
  copied (pruned) layers (q, k, v, o, gate, up, down), plus all RMSNorm weights of the student.
  Merged into the weights at load time, so they cost no FLOPs at inference.
* **Objective**: forward KL(p_teacher || q_student) at temperature 1 (to the teacher's
  distribution renormalised on the kept vocabulary when the head is trimmed), optionally
  mixed with the total-variation distance ``1 - sum min(p, q)`` (exactly one minus the
  speculative acceptance), on the *response* positions of chat-templated ShareGPT **train**
  turns (prompt + reference reply, packed into fixed-length sequences).
* **On-policy data** (``on_policy_fraction`` F > 0, as in DistillSpec): the share F of the
  training rows are the LLM's own temperature-1 continuations of ShareGPT **train** prompts
  (:mod:`hlm_gym.lm.onpolicy`, generated once with the KV cache and cached in the run folder),
  the rest reference replies; the LLM's continuations of a few *validation* prompts are
  generated too, for monitoring and for fitting the draft temperature, never for training.
* **Warm start** (``init_from``): the student (layers, kept neurons and tokens, adapters and
  norms) is taken from an exported artifact instead of being pruned and initialised afresh;
  the draft temperature folded into its final norm at export is unfolded first.
* **Shipping**: the adapters and norms in float16 safetensors, with the kept neuron and token
  indices, plus a JSON config (``hlm_gym/data/slm/``); see :mod:`hlm_gym.lm.slm` for loading.

The run folder holds ``checkpoint.pt`` (adapters, optimizer, step, RNG state), written
atomically every ``--ckpt-every`` steps, and ``log.jsonl``; ``--resume`` continues from it
with the same data order (the data stream is a deterministic function of the seed).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from hlm_gym.lm.acceptance import acceptance_on, final_hidden
from hlm_gym.lm.chat_examples import encode_example, eval_prompts, train_prompts
from hlm_gym.lm.model_types import ModelLoadError
from hlm_gym.lm.onpolicy import TRAIN_FILE, VAL_FILE, continuation_data, mixed_row, pack_examples
from hlm_gym.lm.slm import (ARTIFACT_FORMAT, ARTIFACT_JSON, ARTIFACT_WEIGHTS, MLP_KEY, VOCAB_KEY, check_acceptance,
                            read_artifact_config, read_delta, slm_from_delta, student_from_delta)
from hlm_gym.lm.student import (LORA_TARGETS, DistillError, LoRALinear, TrimmedLMHead, build_student, delta_state,
                                merge_student, validate_layers, validate_rank, validate_vocab)
from hlm_gym.paths import atomic_write_bytes, atomic_write_text, folder_problem

# Names of this module before the student architecture moved to hlm_gym.lm.student, the data to
# hlm_gym.lm.chat_examples and the metrics to hlm_gym.lm.acceptance; still importable from here.
__all__ = ["BuildConfig", "DistillError", "LORA_TARGETS", "LoRALinear", "MLP_KEY", "TrimmedLMHead", "VOCAB_KEY",
           "acceptance_on", "build", "build_student", "calibrate_temperature", "check_output_folder",
           "check_run_folder", "default_layers", "delta_state",
           "distill_loss", "eval_prompts", "export_artifact", "final_hidden", "frequent_vocab", "load_checkpoint_student",
           "lr_at", "merge_student", "mlp_importance", "packed_sequences", "progress_fraction", "top_neurons",
           "train_prompts", "validate_layers", "validate_rank", "validate_vocab"]
_eval_prompts = eval_prompts  # old private name, imported by hlm_gym.cli.slm; use eval_prompts


# ----------------------------------------------------------------------------- recipe
def frequent_vocab(tokenizer, prompts, n: int, max_prompt_tokens: int = 160,
                   max_reply_tokens: int = 384) -> torch.Tensor:
    """The ``n`` most frequent token ids in the chat-templated ``prompts`` (prompt + reply).

    Ties are broken by token id, so the set is a deterministic function of the text. The
    special tokens of the tokenizer are always kept (they are counted on top of ``n``).
    """
    if n < 1:
        raise DistillError(f"vocabulary size must be >= 1, got {n}")
    vocab_size = len(tokenizer)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for prompt in prompts:
        enc = encode_example(tokenizer, prompt, max_prompt_tokens, max_reply_tokens)
        if enc is not None:
            counts += torch.bincount(torch.tensor(enc[0]), minlength=vocab_size)[:vocab_size]
    order = torch.argsort(-counts, stable=True)  # most frequent first, ties by token id
    special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < vocab_size]
    keep = sorted(set(order[:n].tolist()) | set(special))
    return torch.tensor(keep, dtype=torch.long)


@torch.no_grad()
def mlp_importance(model, ids: torch.Tensor, chunk: int = 4) -> torch.Tensor:
    """Per-layer, per-neuron importance of the gated MLPs of ``model`` on the token rows ``ids``.

    The score of neuron ``j`` of a layer is ``E|a_j| * ||W_down[:, j]||``: the mean magnitude
    of its activation ``silu(gate_j(x)) * up_j(x)`` times the norm of the column it writes
    into the residual stream (the first-order size of its contribution). Shape
    ``(n_layers, intermediate_size)``.
    """
    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    count = [0]
    hooks = []
    for i, layer in enumerate(layers):
        def hook(mod, inp, out, i=i):
            a = inp[0].detach().reshape(-1, inp[0].shape[-1])
            sums[i] += a.abs().sum(0).double().cpu()
        hooks.append(layer.mlp.down_proj.register_forward_hook(hook))
    try:
        for k in range(0, ids.shape[0], chunk):
            x = ids[k:k + chunk]
            model.model(input_ids=x, use_cache=False)
            count[0] += x.numel()
    finally:
        for h in hooks:
            h.remove()
    col = torch.stack([layer.mlp.down_proj.weight.detach().float().norm(dim=0).double().cpu() for layer in layers])
    return torch.stack(sums) / max(count[0], 1) * col


def top_neurons(importance: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` most important neurons of each layer (rows of ``importance``), sorted."""
    n = importance.shape[1]
    if not isinstance(width, int) or not 1 <= width <= n:
        raise DistillError(f"MLP width must be an integer in 1..{n}, got {width!r}")
    return torch.sort(torch.topk(importance, width, dim=1).indices, dim=1).values


def default_layers(n_student: int, n_total: int, n_last: int | None = None) -> list[int]:
    """The first ``n_student - n_last`` layers and the last ``n_last`` layers of the teacher."""
    if not 1 <= n_student <= n_total:
        raise DistillError(f"number of layers must be in 1..{n_total}, got {n_student}")
    if n_last is None:
        n_last = n_student // 2
    n_last = min(n_last, n_student - 1) if n_student > 1 else 0
    first = list(range(n_student - n_last))
    last = list(range(n_total - n_last, n_total))
    return sorted(set(first + last))



# ----------------------------------------------------------------------------- data
def packed_sequences(tokenizer, prompts, seq_len: int, n_sequences: int, seed: int,
                     max_prompt_tokens: int = 160, max_reply_tokens: int = 384):
    """``n_sequences`` packed rows (ids, response mask) of ``seq_len`` tokens, deterministic in ``seed``.

    Examples (chat-templated prompt + reference reply) are shuffled with ``seed`` and
    concatenated; the stream is cut into rows of ``seq_len`` tokens.
    """
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    examples = []
    need, have = seq_len * n_sequences, 0
    for i in order:
        enc = encode_example(tokenizer, prompts[i], max_prompt_tokens, max_reply_tokens)
        if enc is None:
            continue
        examples.append(enc)
        have += len(enc[0])
        if have >= need:
            break
    if have < seq_len:
        raise DistillError("not enough training text for one sequence")
    # every full row of the collected examples (at least n_sequences; more when the last example
    # is long), as before pack_examples existed: the shipped recipe's rows are unchanged
    return pack_examples(examples, seq_len)


# ----------------------------------------------------------------------------- metrics
def distill_loss(t_logits: torch.Tensor, s_logits: torch.Tensor, tv_weight: float = 0.0,
                 kept: torch.Tensor | None = None):
    """Mean forward KL(p||q) (+ ``tv_weight`` * TV) over rows, and the mean acceptance sum min(p, q).

    With ``kept`` (the ids of a trimmed student head), ``s_logits`` holds only those columns;
    the KL is taken to the teacher's distribution renormalised on the kept set (the mass
    outside it cannot be matched), and the acceptance counts the kept tokens only.
    """
    t_logp = torch.log_softmax(t_logits.float(), dim=-1)
    s_logp = torch.log_softmax(s_logits.float(), dim=-1)
    if kept is not None:
        t_logp = t_logp[:, kept]
    p = t_logp.exp()
    if kept is None:
        kl = (p * (t_logp - s_logp)).sum(-1).mean()
    else:  # KL to the teacher renormalised on the kept tokens
        mass = p.sum(-1, keepdim=True).clamp_min(1e-12)
        kl = ((p / mass) * (t_logp - mass.log() - s_logp)).sum(-1).mean()
    accept = torch.minimum(p, s_logp.exp()).sum(-1)
    loss = kl
    if tv_weight:
        loss = loss + tv_weight * (1.0 - accept).mean()
    return loss, kl.detach(), accept.detach().mean()


# ----------------------------------------------------------------------------- training
@dataclass
class BuildConfig:
    """Settings of one distillation run (the recipe, its budget and where it runs)."""

    layers: list[int] = field(default_factory=lambda: list(range(30)))
    rank: int = 16
    alpha: float = 32.0
    steps: int = 2000
    batch_size: int = 2
    seq_len: int = 256
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    tv_weight: float = 0.0
    seed: int = 0
    ckpt_every: int = 25
    eval_every: int = 50
    eval_sequences: int = 12
    device: str = "cpu"
    threads: int | None = None
    time_budget_s: float | None = None
    vocab: int | None = 8192
    mlp_width: int | None = 576
    calib_sequences: int = 8
    init_from: str | None = None  # artifact folder to start the student from
    extra_rank: int = 0  # with init_from: adapter rank added to the artifact's (new rows start at zero effect)
    on_policy_fraction: float = 0.0  # share of training rows from the LLM's continuations of train prompts
    on_policy_prompts: int = 800  # train prompts the LLM continues
    on_policy_tokens: int = 128  # tokens per continuation (at most)
    on_policy_max_prompt: int = 128  # longest templated prompt continued
    on_policy_batch: int = 16  # prompts decoded together
    on_policy_eval_prompts: int = 24  # validation prompts continued for monitoring and the temperature fit


def check_onpolicy_settings(cfg: "BuildConfig") -> None:
    """One-line :class:`DistillError` for out-of-range on-policy settings (before any model loads)."""
    f = cfg.on_policy_fraction
    if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0.0 <= f <= 1.0 or f != f:
        raise DistillError(f"--on-policy-fraction must lie in [0, 1], got {f!r}")
    for flag, value, low in (("--on-policy-prompts", cfg.on_policy_prompts, 1),
                             ("--on-policy-tokens", cfg.on_policy_tokens, 1),
                             ("--on-policy-max-prompt", cfg.on_policy_max_prompt, 2),
                             ("--on-policy-batch", cfg.on_policy_batch, 1),
                             ("--on-policy-eval-prompts", cfg.on_policy_eval_prompts, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DistillError(f"{flag} must be an integer >= {low}, got {value!r}")


def check_extra_rank(extra_rank: int, init_from: str | Path | None) -> None:
    """One-line :class:`DistillError` unless ``extra_rank`` is an integer >= 0, > 0 only with ``init_from``."""
    if not isinstance(extra_rank, int) or isinstance(extra_rank, bool) or extra_rank < 0:
        raise DistillError(f"--extra-rank must be an integer >= 0, got {extra_rank!r}")
    if extra_rank and not init_from:
        raise DistillError("--extra-rank applies only to a new run started with --init-from "
                           "(a resumed run keeps its rank; a new run from scratch takes --rank)")


def check_init_from(folder: str | Path) -> dict:
    """The ``slm.json`` of the ``--init-from`` artifact folder, or a one-line :class:`DistillError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillError(f"--init-from {folder}: not a folder")
    try:
        return read_artifact_config(folder)
    except ModelLoadError as exc:
        raise DistillError(f"--init-from {folder}: {exc}") from None


def init_artifact_temperature(art: dict) -> float:
    """The draft temperature an artifact folded into its final norm at export (1.0 when none)."""
    cal = (art.get("training") or {}).get("calibration") or {}
    temp = cal.get("temperature", 1.0)
    return float(temp) if isinstance(temp, (int, float)) and temp > 0 else 1.0


def progress_fraction(step: int, seconds: float, cfg: "BuildConfig") -> float:
    """How far the run is: by steps, or by wall time when ``time_budget_s`` is set (whichever is further)."""
    frac = step / max(1, cfg.steps)
    if cfg.time_budget_s:
        frac = max(frac, seconds / cfg.time_budget_s)
    return min(1.0, frac)


def lr_at(step: int, cfg: BuildConfig, seconds: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_budget_s:
        frac = max(frac, seconds / cfg.time_budget_s)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def _save_torch(path: Path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path) -> dict:
    """The state of a run's ``checkpoint.pt``; a damaged file is a :class:`DistillError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and torch errors of a damaged or foreign file
        raise DistillError(f"cannot read checkpoint {path} ({type(exc).__name__}); it is damaged or not a "
                           "checkpoint of 'hlm-gym slm build'") from None
    if not isinstance(state, dict) or not {"config", "delta", "step"} <= state.keys():
        raise DistillError(f"{path} is not a checkpoint of 'hlm-gym slm build'")
    return state


def check_output_folder(path: str | Path, label: str, error: type[Exception] = DistillError) -> Path:
    """Check that ``path`` is (or can be made) a folder this process can write in; returns it.

    Run before hours of training, so a bad ``--out`` or ``--export`` is a one-line ``error``
    (``label`` names the flag) instead of a traceback at the end.
    """
    path = Path(path)
    problem = folder_problem(path)
    if problem:
        raise error(f"{label} {path}: {problem}")
    return path


def check_run_folder(run_dir: str | Path, resume: bool, label: str = "--out") -> Path:
    """Check the run folder before any model is loaded: writable, and holding a run iff ``resume``."""
    run_dir = check_output_folder(run_dir, label)
    ckpt = run_dir / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise DistillError(f"--resume: no checkpoint at {ckpt}")
    if not resume and ckpt.exists():
        raise DistillError(f"{run_dir} already holds a run; pass --resume or choose another {label}")
    return run_dir


def _trim_log(log_path: Path, step: int) -> None:
    """Keep the log records up to the checkpoint's ``step`` (dropping a torn last line of a killed run)."""
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short when the process was killed
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            kept.append(line)
    atomic_write_text(log_path, "".join(ln + "\n" for ln in kept))



def build(cfg: BuildConfig, run_dir: str | Path, resume: bool = False, llm=None,
          progress: bool = True, log=print):
    """Run (or resume) a distillation into ``run_dir``; returns the trained student (with adapters)."""
    from tqdm.auto import tqdm

    from hlm_gym.lm.models import EMBEDDED_LLM, load_model  # transformers, only when a run starts

    run_dir = Path(run_dir)
    validate_rank(cfg.rank)
    check_onpolicy_settings(cfg)
    check_extra_rank(cfg.extra_rank, cfg.init_from)
    if cfg.init_from and not resume:
        check_init_from(cfg.init_from)
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.seq_len < 8:
        raise DistillError("steps and batch size must be >= 1 and seq_len >= 8")
    ckpt_path = check_run_folder(run_dir, resume) / "checkpoint.pt"
    state = None
    if resume:
        state = _load_checkpoint(ckpt_path)
        saved = BuildConfig(**state["config"])
        # the run's recipe is fixed by its first start; only the step budget and device may change
        saved.steps, saved.device, saved.threads = cfg.steps, cfg.device, cfg.threads
        saved.ckpt_every, saved.eval_every = cfg.ckpt_every, cfg.eval_every
        saved.time_budget_s = cfg.time_budget_s
        cfg = saved
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistillError("--device cuda requested but CUDA is not available")
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    if llm is None:
        llm = load_model(EMBEDDED_LLM, device=device)
    teacher, tokenizer = llm.model.to(device).eval(), llm.tokenizer
    for p in teacher.parameters():
        p.requires_grad_(False)
    init = None
    if cfg.init_from and state is None:
        try:
            art, init_delta, init_vocab, init_mlp, _ = read_delta(llm, cfg.init_from)
        except ModelLoadError as exc:
            raise DistillError(f"--init-from {cfg.init_from}: {exc}") from None
        init = (art, init_delta)
        rank = int(art["rank"]) + cfg.extra_rank  # the same scale alpha/rank, so the start is the artifact
        cfg = replace(cfg, layers=[int(i) for i in art["layers"]], rank=rank,
                      alpha=float(art["alpha"]) / int(art["rank"]) * rank,
                      vocab=None if init_vocab is None else (art.get("recipe") or {}).get("vocab") or art["vocab"],
                      mlp_width=art.get("mlp_width"))
        state = {"vocab_ids": init_vocab, "mlp_keep": init_mlp}  # the artifact's pruning, reused below
    validate_layers(cfg.layers, teacher.config.num_hidden_layers)
    vocab_ids = None
    if cfg.vocab is not None:
        vocab_ids = (state["vocab_ids"] if state is not None and state.get("vocab_ids") is not None
                     else frequent_vocab(tokenizer, train_prompts(), cfg.vocab))
    mlp_keep = None
    if cfg.mlp_width is not None:
        if state is not None and state.get("mlp_keep") is not None:
            mlp_keep = state["mlp_keep"]
        else:
            cal_ids, _ = packed_sequences(tokenizer, train_prompts(), cfg.seq_len, cfg.calib_sequences,
                                          cfg.seed + 3)
            mlp_keep = top_neurons(mlp_importance(teacher, cal_ids.to(device))[cfg.layers], cfg.mlp_width)
    student = build_student(teacher, cfg.layers, cfg.rank, cfg.alpha, seed=cfg.seed,
                            vocab_ids=vocab_ids, mlp_keep=mlp_keep).to(device)
    if init is not None:
        art, init_delta = init
        state = None
        try:
            loaded = student_from_delta(teacher, Path(cfg.init_from), art, init_delta, vocab_ids, mlp_keep)
        except ModelLoadError as exc:
            raise DistillError(f"--init-from {cfg.init_from}: {exc}") from None
        with torch.no_grad():
            own = dict(student.named_parameters())
            for name, p in loaded.named_parameters():
                if p.requires_grad:  # widened adapters (extra_rank): the artifact's fill the leading rows/columns
                    own[name][tuple(slice(0, n) for n in p.shape)].copy_(p.to(own[name].device))
            student.model.norm.weight.mul_(init_artifact_temperature(art))  # back to temperature 1
        del loaded
        log(f"initialised from {cfg.init_from} (draft temperature {init_artifact_temperature(art)} unfolded)")
    kept = None if vocab_ids is None else student.lm_head.ids
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    step = 0
    if state is not None:
        student.load_state_dict(state["delta"], strict=False)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"])

    ids, mask = packed_sequences(tokenizer, train_prompts(), cfg.seq_len,
                                 cfg.steps * cfg.batch_size, cfg.seed)
    ev_ids, ev_mask = packed_sequences(tokenizer, eval_prompts(), cfg.seq_len,
                                       cfg.eval_sequences, cfg.seed + 1)
    n_rows = ids.shape[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    on_ids = on_mask = on_val = None
    if cfg.on_policy_fraction > 0:
        on_ids, on_mask = onpolicy_rows(cfg, teacher, tokenizer, run_dir, llm.fingerprint, progress)
        on_val = onpolicy_validation_rows(cfg, teacher, tokenizer, run_dir, llm.fingerprint, progress)
        log(f"on-policy data: {on_ids.shape[0]} rows of {cfg.seq_len} tokens from the LLM's continuations of "
            f"{cfg.on_policy_prompts} train prompts ({int(on_mask.sum())} training positions), "
            f"{cfg.on_policy_fraction:.0%} of the batches' rows")
    n_on = 0 if on_ids is None else on_ids.shape[0]

    def batch_at(k0: int):
        xs, ms = [], []
        for k in range(k0, k0 + cfg.batch_size):
            on, i = mixed_row(k, cfg.on_policy_fraction, n_rows, n_on)
            xs.append(on_ids[i] if on else ids[i])
            ms.append(on_mask[i] if on else mask[i])
        return torch.stack(xs), torch.stack(ms)

    atomic_write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2))
    log_path = run_dir / "log.jsonl"
    if state is not None and log_path.is_file():
        _trim_log(log_path, step)  # drop records written after the checkpoint by an interrupted process
    log_fh = open(log_path, "a", encoding="utf-8")
    use_amp = device.type == "cuda"
    tokens_seen = int(state["tokens_seen"]) if state else 0
    train_seconds = float(state.get("train_seconds", 0.0)) if state else 0.0

    def save_ckpt():
        _save_torch(ckpt_path, {
            "config": asdict(cfg), "delta": {k: v.cpu() for k, v in delta_state(student).items()},
            "optimizer": opt.state_dict(), "step": step, "rng": torch.get_rng_state(),
            "tokens_seen": tokens_seen, "train_seconds": train_seconds,
            "vocab_ids": None if kept is None else kept.cpu(),
            "mlp_keep": None if mlp_keep is None else mlp_keep.cpu(),
        })

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc="distil", dynamic_ncols=True)
    ema_acc = None
    t_last = time.time()
    while step < cfg.steps and progress_fraction(step, train_seconds, cfg) < 1.0:
        x, m = batch_at(step * cfg.batch_size)
        x, m = x.to(device), m.to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, train_seconds)
        student.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            with torch.no_grad():
                t_logits = teacher.lm_head(final_hidden(teacher, x)[m])
            s_hidden = final_hidden(student, x)[m]
            s_logits = (student.lm_head(s_hidden) if kept is None
                        else student.lm_head.kept_logits(s_hidden))
        loss, kl, acc = distill_loss(t_logits, s_logits, cfg.tv_weight, kept)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        tokens_seen += int(x.numel())
        now = time.time()
        train_seconds += now - t_last
        t_last = now
        ema_acc = acc.item() if ema_acc is None else 0.95 * ema_acc + 0.05 * acc.item()
        bar.update(1)
        bar.set_postfix(kl=f"{kl.item():.3f}", acc=f"{ema_acc:.3f}", lr=f"{lr_at(step - 1, cfg, train_seconds):.1e}")
        rec = {"step": step, "kl": round(kl.item(), 5), "acc": round(acc.item(), 5),
               "tokens": tokens_seen, "seconds": round(train_seconds, 1)}
        done = step >= cfg.steps or progress_fraction(step, train_seconds, cfg) >= 1.0
        if step % cfg.eval_every == 0 or done:
            student.eval()
            ev_acc, ev_agree, _ = acceptance_on(teacher, student, ev_ids.to(device), ev_mask.to(device))
            rec.update(val_acc=round(ev_acc, 5), val_agree=round(ev_agree, 5))
            line = f"step {step}: validation acceptance {ev_acc:.4f}, greedy agreement {ev_agree:.4f}"
            if on_val is not None:
                on_acc, on_agree, _ = acceptance_on(teacher, student, on_val[0].to(device), on_val[1].to(device))
                rec.update(val_onpolicy_acc=round(on_acc, 5), val_onpolicy_agree=round(on_agree, 5))
                line += f"; on LLM continuations {on_acc:.4f}, {on_agree:.4f}"
            log(line)
            t_last = time.time()
        log_fh.write(json.dumps(rec) + "\n")
        log_fh.flush()
        if step % cfg.ckpt_every == 0 or done:
            save_ckpt()
            t_last = time.time()
    bar.close()
    log_fh.close()
    student.eval()
    return student, cfg, {"tokens_seen": tokens_seen, "train_seconds": train_seconds, "steps": step}


def onpolicy_rows(cfg: BuildConfig, teacher, tokenizer, run_dir: str | Path, fingerprint: str,
                  progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``(ids, mask)`` rows of the LLM's continuations of train prompts (cached in ``run_dir``)."""
    examples = continuation_data(teacher, tokenizer, train_prompts(), Path(run_dir) / TRAIN_FILE,
                                 cfg.on_policy_prompts, cfg.on_policy_tokens, cfg.on_policy_max_prompt,
                                 cfg.seed + 11, fingerprint, cfg.on_policy_batch, progress,
                                 desc="LLM continuations (train)")
    return pack_examples(examples, cfg.seq_len, seed=cfg.seed + 5)


def onpolicy_validation_rows(cfg: BuildConfig, teacher, tokenizer, run_dir: str | Path, fingerprint: str,
                             progress: bool = True) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Packed rows of the LLM's continuations of validation prompts (monitoring and temperature fit only)."""
    if cfg.on_policy_eval_prompts < 1:
        return None
    examples = continuation_data(teacher, tokenizer, eval_prompts(), Path(run_dir) / VAL_FILE,
                                 cfg.on_policy_eval_prompts, cfg.on_policy_tokens, cfg.on_policy_max_prompt,
                                 cfg.seed + 12, fingerprint, cfg.on_policy_batch, progress,
                                 desc="LLM continuations (validation)")
    return pack_examples(examples, cfg.seq_len)


def load_checkpoint_student(run_dir: str | Path, llm):
    """Rebuild the student (with adapters) of a run folder's checkpoint on top of ``llm``."""
    ckpt_path = Path(run_dir) / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise DistillError(f"no checkpoint at {ckpt_path}")
    state = _load_checkpoint(ckpt_path)
    cfg = BuildConfig(**state["config"])
    student = build_student(llm.model, cfg.layers, cfg.rank, cfg.alpha, seed=cfg.seed,
                            vocab_ids=state.get("vocab_ids"), mlp_keep=state.get("mlp_keep"))
    student.load_state_dict(state["delta"], strict=False)
    return student.eval(), cfg, state


# ----------------------------------------------------------------------------- export
def export_artifact(student, cfg: BuildConfig, llm, out_dir: str | Path, summary: dict | None = None) -> dict:
    """Write the student's delta (float16) and ``slm.json`` into ``out_dir`` and verify it.

    Both files are written and checked in a unique staging folder inside ``out_dir``: the SLM is
    rebuilt from them exactly as :mod:`hlm_gym.lm.slm` loads it and its acceptance on the fixed
    :func:`hlm_gym.lm.slm.check_batch` is recorded in the JSON (the figure the tests reproduce).
    Only then are they moved over the old ones (``slm.json`` first; it records the weights'
    SHA-256, so a reader that catches the moment in between gets a clear mismatch error). A
    failure leaves ``out_dir`` as it was.
    """
    out_dir = check_output_folder(out_dir, "export folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        meta = _write_artifact(student, cfg, llm, stage, summary)
        for name in (ARTIFACT_JSON, ARTIFACT_WEIGHTS):
            (stage / name).chmod(0o644)  # shipped in the wheel: world-readable like other sources
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def _write_artifact(student, cfg: BuildConfig, llm, folder: Path, summary: dict | None) -> dict:
    """Write the artifact's two files into ``folder`` (a private staging folder) and check it."""
    from safetensors.torch import save

    delta = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in delta_state(student).items()}
    head = student.lm_head
    if isinstance(head, TrimmedLMHead):
        delta[VOCAB_KEY] = head.ids.detach().to("cpu", torch.int32).contiguous()
    mlp_keep = getattr(student, "hlm_mlp_keep", None)
    if mlp_keep is not None:
        delta[MLP_KEY] = mlp_keep.detach().to("cpu", torch.int32).contiguous()
    weights = save(delta, metadata={"format": "pt"})
    (folder / ARTIFACT_WEIGHTS).write_bytes(weights)
    n_params = sum(v.numel() for k, v in delta.items() if k not in (VOCAB_KEY, MLP_KEY))
    meta = {
        "format": ARTIFACT_FORMAT,
        "layers": list(cfg.layers),
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "targets": list(LORA_TARGETS),
        "vocab": head.out_rows if isinstance(head, TrimmedLMHead) else None,
        "mlp_width": None if mlp_keep is None else int(mlp_keep.shape[1]),
        "base_sha256": llm.fingerprint,
        "base_name": llm.name,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "delta_params": n_params,
        "recipe": asdict(cfg),
        "training": summary or {},
    }
    (folder / ARTIFACT_JSON).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    slm = slm_from_delta(llm, folder)
    meta["check"] = check_acceptance(llm.model, slm.model, llm.tokenizer)
    (folder / ARTIFACT_JSON).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


@torch.no_grad()
def calibrate_temperature(teacher, student, ids: torch.Tensor, mask: torch.Tensor,
                          grid=(0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1, 1.2),
                          onpolicy: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Pick the draft temperature T maximising acceptance on (ids, mask) and fold it into the student.

    ``logits = W_lm (g * rmsnorm(h))`` is linear in the student's own final-norm weight ``g``, so
    ``g / T`` gives exactly ``softmax(z / T)`` at no inference cost (the LM head stays shared).
    With ``onpolicy`` (rows of the LLM's continuations of validation prompts) the temperature
    is chosen by the acceptance there (the text the SLM drafts on in the loop); both score
    tables are returned.
    """
    scores, n = temperature_scores(teacher, student, ids, mask, grid)
    res = {"acceptance_by_temperature": scores, "positions": n}
    chosen = scores
    if onpolicy is not None:
        on_scores, on_n = temperature_scores(teacher, student, onpolicy[0], onpolicy[1], grid)
        res.update(onpolicy_acceptance_by_temperature=on_scores, onpolicy_positions=on_n,
                   chosen_by="LLM continuations of validation prompts")
        chosen = on_scores
    best = max(chosen, key=chosen.get)
    student.model.norm.weight.div_(best)
    return {"temperature": best, **res}


@torch.no_grad()
def temperature_scores(teacher, student, ids: torch.Tensor, mask: torch.Tensor, grid) -> tuple[dict, int]:
    """Mean acceptance of the student at each draft temperature of ``grid`` on (ids, mask), and the positions."""
    t_parts, s_parts = [], []
    for i in range(ids.shape[0]):
        x, m = ids[i:i + 1], mask[i:i + 1]
        if not m.any():
            continue
        t_parts.append(teacher.lm_head(final_hidden(teacher, x)[m]).float())
        s_parts.append(student.lm_head(final_hidden(student, x)[m]).float())
    p = torch.softmax(torch.cat(t_parts), -1)
    zs = torch.cat(s_parts)
    scores = {}
    for temp in grid:
        scores[float(temp)] = torch.minimum(p, torch.softmax(zs / temp, -1)).sum(-1).mean().item()
    return scores, int(p.shape[0])
