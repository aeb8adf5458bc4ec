"""``hlm-gym slm build`` and ``hlm-gym slm report``: distil the on-device SLM, or evaluate it.

The build defaults are :class:`hlm_gym.lm.distill.BuildConfig`'s. That module imports torch, so
the parser holds :class:`_BuildDefault` placeholders, looked up only when ``slm build --help``
shows them or the command runs; ``hlm-gym --help`` imports no model code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


class _BuildDefault:
    """The default of one :class:`hlm_gym.lm.distill.BuildConfig` field, imported when first needed."""

    def __init__(self, field: str) -> None:
        self.field = field

    def value(self) -> Any:
        """The field's default value."""
        from hlm_gym.lm.distill import BuildConfig

        return getattr(BuildConfig(), self.field)

    def __str__(self) -> str:  # what %(default)s shows in --help
        return str(self.value())


def _resolve_defaults(args: argparse.Namespace) -> None:
    """Replace every :class:`_BuildDefault` left in ``args`` by its value."""
    for name, value in vars(args).items():
        if isinstance(value, _BuildDefault):
            setattr(args, name, value.value())


def _int_list(text: str) -> list[int]:
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def _vocab_size(text: str) -> int | None:
    if text.strip().lower() == "full":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {n}")
    return n


def register(subparsers: Any) -> None:
    """Add ``slm build`` and ``slm report`` to the ``hlm-gym`` sub-parsers."""
    d = argparse.Namespace(**{f: _BuildDefault(f) for f in (
        "layers", "rank", "mlp_width", "vocab", "steps", "batch_size", "seq_len", "lr", "warmup", "tv_weight",
        "seed", "ckpt_every", "eval_every", "eval_sequences", "on_policy_fraction", "on_policy_prompts",
        "on_policy_tokens", "on_policy_max_prompt", "on_policy_batch", "on_policy_eval_prompts")})
    slm = subparsers.add_parser("slm", help="build or evaluate the distilled on-device SLM")
    sub = slm.add_subparsers(dest="slm_command", required=True)

    b = sub.add_parser("build", help="distil the SLM from the embedded LLM and export the artifact")
    b.add_argument("--layers", type=_int_list, default=d.layers,
                   help="teacher layers to keep, e.g. '0-5,26-29' (default %(default)s)")
    b.add_argument("--rank", type=int, default=d.rank, help="adapter rank (default %(default)s)")
    b.add_argument("--mlp-width", type=_vocab_size, default=d.mlp_width, metavar="N|full",
                   help="keep the N most important MLP neurons of each layer (width pruning), or "
                        "'full' (default %(default)s)")
    b.add_argument("--vocab", type=_vocab_size, default=d.vocab, metavar="N|full",
                   help="keep the N most frequent training tokens in the SLM's LM head, or "
                        "'full' for the whole vocabulary (default %(default)s)")
    b.add_argument("--alpha", type=float, default=None, help="adapter alpha (default 2*rank)")
    b.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default %(default)s)")
    b.add_argument("--batch-size", type=int, default=d.batch_size)
    b.add_argument("--seq-len", type=int, default=d.seq_len)
    b.add_argument("--lr", type=float, default=d.lr)
    b.add_argument("--warmup", type=int, default=d.warmup)
    b.add_argument("--tv-weight", type=float, default=d.tv_weight,
                   help="weight of the total-variation term added to the forward KL")
    b.add_argument("--seed", type=int, default=d.seed)
    b.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    b.add_argument("--eval-every", type=int, default=d.eval_every)
    b.add_argument("--eval-sequences", type=int, default=d.eval_sequences)
    b.add_argument("--out", type=Path, default=Path("runs/slm"),
                   help="run folder for checkpoints and logs (default %(default)s)")
    b.add_argument("--export", type=Path, default=None,
                   help="where to write the artifact (default: OUT/artifact; pass "
                        "hlm_gym/data/slm to replace the shipped one)")
    b.add_argument("--export-only", action="store_true",
                   help="export the run's latest checkpoint without training further")
    b.add_argument("--no-calibrate", action="store_true",
                   help="skip fitting the draft temperature on validation turns before export")
    b.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop after this much training time, with the LR schedule stretched "
                        "over it (whichever of --steps and --time-budget comes first)")
    b.add_argument("--init-from", type=Path, default=None, metavar="ARTIFACT_DIR",
                   help="start the student from an exported artifact (its layers, kept neurons and tokens, "
                        "adapters and norms; e.g. hlm_gym/data/slm) instead of pruning afresh")
    b.add_argument("--extra-rank", type=int, default=0, metavar="R",
                   help="with --init-from: add R to the artifact's adapter rank (the new directions start "
                        "with no effect, so training starts from the artifact; default 0)")
    b.add_argument("--on-policy-fraction", type=float, default=d.on_policy_fraction, metavar="F",
                   help="share of training rows taken from the LLM's own temperature-1 continuations of "
                        "train prompts, the rest reference replies (default %(default)s)")
    b.add_argument("--on-policy-prompts", type=int, default=d.on_policy_prompts,
                   help="train prompts the LLM continues for on-policy rows; a larger count than the run folder's "
                        "cache (same settings) keeps the cached continuations and adds the rest "
                        "(default %(default)s)")
    b.add_argument("--on-policy-tokens", type=int, default=d.on_policy_tokens,
                   help="tokens per LLM continuation, at most (default %(default)s)")
    b.add_argument("--on-policy-max-prompt", type=int, default=d.on_policy_max_prompt,
                   help="longest chat-templated prompt continued, in tokens (default %(default)s)")
    b.add_argument("--on-policy-batch", type=int, default=d.on_policy_batch,
                   help="prompts the LLM continues together (default %(default)s)")
    b.add_argument("--on-policy-eval-prompts", type=int, default=d.on_policy_eval_prompts,
                   help="validation prompts continued by the LLM to monitor the run and fit the draft "
                        "temperature, never trained on; 0: none (default %(default)s)")
    b.add_argument("--resume", action="store_true", help="continue the run in --out")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_build)

    r = sub.add_parser("report", help="evaluate an SLM against the LLM on held-out ShareGPT turns")
    r.add_argument("--slm", default=None, help="artifact folder (default: the shipped one)")
    r.add_argument("--prompts", type=int, default=100, help="held-out test turns (default %(default)s)")
    r.add_argument("--max-tokens", type=int, default=256, help="tokens per turn, prompt + reply")
    r.add_argument("--generated", type=int, default=60,
                   help="also measure on this many test prompts continued by the LLM (sampling, T=1; "
                        "0: skip; default %(default)s)")
    r.add_argument("--gen-tokens", type=int, default=96,
                   help="tokens the LLM generates per prompt (default %(default)s)")
    r.add_argument("--context", type=int, default=256, help="context length for the FLOP count")
    r.add_argument("--latency-steps", type=int, default=50)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--out", type=Path, default=Path("runs/slm_report"),
                   help="folder for report.json and beta_vs_u.png (default %(default)s)")
    r.set_defaults(func=_report)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _build(args: argparse.Namespace) -> int:
    from hlm_gym.lm.chat_examples import eval_prompts
    from hlm_gym.lm.distill import (BuildConfig, build, calibrate_temperature, check_output_folder,
                                    check_run_folder, export_artifact, load_checkpoint_student,
                                    onpolicy_validation_rows, packed_sequences)
    from hlm_gym.lm.models import EMBEDDED_LLM, load_model

    from hlm_gym.lm.distill import DistillError, check_extra_rank, check_init_from, check_onpolicy_settings

    if args.init_from is not None:
        shaped = [flag for flag, name in (("--layers", "layers"), ("--rank", "rank"), ("--mlp-width", "mlp_width"),
                                          ("--vocab", "vocab")) if not isinstance(getattr(args, name), _BuildDefault)]
        shaped += ["--alpha"] if args.alpha is not None else []
        if shaped:
            raise DistillError(f"--init-from takes the student's shape from the artifact; drop {', '.join(shaped)}")
        if args.resume or args.export_only:
            raise DistillError("--init-from starts a new run; a resumed run keeps the start it was given")
        check_init_from(args.init_from)
    check_extra_rank(args.extra_rank, args.init_from)
    _resolve_defaults(args)
    # bad folders are found before the LLM is loaded and hours of training are spent
    check_run_folder(args.out, resume=args.resume or args.export_only)
    export_dir = args.export if args.export is not None else Path(args.out) / "artifact"
    check_output_folder(export_dir, "--export")
    alpha = args.alpha if args.alpha is not None else 2.0 * args.rank
    cfg = BuildConfig(layers=args.layers, rank=args.rank, alpha=alpha, steps=args.steps,
                      batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      warmup=args.warmup, tv_weight=args.tv_weight, seed=args.seed,
                      ckpt_every=args.ckpt_every, eval_every=args.eval_every,
                      eval_sequences=args.eval_sequences, device=_device(args.device),
                      threads=args.threads, vocab=args.vocab, mlp_width=args.mlp_width,
                      time_budget_s=args.time_budget * 60 if args.time_budget else None,
                      init_from=None if args.init_from is None else str(args.init_from),
                      on_policy_fraction=args.on_policy_fraction, on_policy_prompts=args.on_policy_prompts,
                      on_policy_tokens=args.on_policy_tokens, on_policy_max_prompt=args.on_policy_max_prompt,
                      on_policy_batch=args.on_policy_batch, on_policy_eval_prompts=args.on_policy_eval_prompts,
                      extra_rank=args.extra_rank)
    check_onpolicy_settings(cfg)
    llm = load_model(EMBEDDED_LLM, device=cfg.device)
    if args.export_only:
        student, cfg, state = load_checkpoint_student(args.out, llm)
        summary = {"steps": state["step"], "tokens_seen": state["tokens_seen"],
                   "train_seconds": state.get("train_seconds")}
    else:
        student, cfg, summary = build(cfg, args.out, resume=args.resume, llm=llm, progress=not args.no_progress)
    if not args.no_calibrate:
        c_ids, c_mask = packed_sequences(llm.tokenizer, eval_prompts(), cfg.seq_len, cfg.eval_sequences, cfg.seed + 2)
        teacher = llm.model
        student = student.to(next(teacher.parameters()).device).eval()
        on_val = None
        if cfg.on_policy_fraction > 0:
            on_val = onpolicy_validation_rows(cfg, teacher, llm.tokenizer, args.out, llm.fingerprint,
                                              progress=not args.no_progress)
            on_val = None if on_val is None else (on_val[0].to(cfg.device), on_val[1].to(cfg.device))
        cal = calibrate_temperature(teacher, student, c_ids.to(cfg.device), c_mask.to(cfg.device), onpolicy=on_val)
        summary = {**summary, "calibration": cal}
        t = cal["temperature"]
        line = (f"draft temperature {t} (validation acceptance {cal['acceptance_by_temperature'][1.0]:.4f} at T=1 -> "
                f"{cal['acceptance_by_temperature'][t]:.4f}")
        if on_val is not None:
            on = cal["onpolicy_acceptance_by_temperature"]
            line += f"; on LLM continuations of validation prompts {on[1.0]:.4f} -> {on[t]:.4f}"
        print(line + ")")
    meta = export_artifact(student.cpu(), cfg, llm if cfg.device == "cpu" else load_model(EMBEDDED_LLM),
                           export_dir, summary)
    chk = meta["check"]
    print(f"exported {export_dir}: {len(cfg.layers)} layers {cfg.layers}, rank {cfg.rank}, "
          f"check acceptance {chk['acceptance']:.4f} ({chk['positions']} positions)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hlm_gym.lm.slm_report import run_report

    run_report(slm_dir=args.slm, n_prompts=args.prompts, max_tokens=args.max_tokens,
               context=args.context, latency_steps=args.latency_steps, seed=args.seed,
               out_dir=args.out, threads=args.threads, generated=args.generated,
               gen_tokens=args.gen_tokens)
    return 0
