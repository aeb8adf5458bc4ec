"""Record per-token traces of the always-send hybrid loop (``hlm-gym traces build``).

The builder decodes ``batch_size`` prompts at once (left padding, attention mask and KV
caches in both models; always-send never has pending tokens, so both models see the same
token stream). Each row is drafted and verified by :mod:`hlm_gym.lm.draft_verify`, with the
per-prompt generators and draw order of ``HybridSession``, which uses the same code. Chunks are
written as part files next to the output so that an interrupted build resumes. The schema
and the loader are in :mod:`hlm_gym.traces.store`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hlm_gym.paths import folder_problem
from hlm_gym.traces.store import (DEFAULT_K_CHOICES, META_KEY, SCHEMA_VERSION, SIGNALS, TraceError,
                                  k_columns)

# ---------------------------------------------------------------------------------- builder
@dataclass(frozen=True)
class TracePrompt:
    """One prompt to trace: its id, split, token ids and decoding seed."""

    id: str
    split: str
    ids: tuple[int, ...]
    seed: int


def trace_batch(pair, prompts: Sequence[TracePrompt], config, k_choices: Sequence[int] = DEFAULT_K_CHOICES,
                eos_token_id: int | None = None) -> dict[str, list]:
    """Decode ``prompts`` together with always-send; returns column lists (rows grouped by prompt).

    :class:`hlm_gym.lm.batch_decoding.BatchedSession` with every draft sent, plus the verdict
    and rejection probability each top-k upload size in ``k_choices`` would have had (same
    uniform). Equivalent to :class:`hlm_gym.lm.decoding.HybridSession` with
    ``seed=prompt.seed`` and ``commit(True)`` at every step (up to float-level differences of
    batched matmuls).
    """
    from hlm_gym.lm.batch_decoding import BatchedSession
    from hlm_gym.lm.decoding import DecodingError
    from hlm_gym.lm.speculative import truncated_draft

    try:
        session = BatchedSession(pair, [pr.ids for pr in prompts], [pr.seed for pr in prompts], config,
                                 eos_token_id=eos_token_id)
    except DecodingError as exc:
        raise TraceError(str(exc)) from None
    rows: dict[int, list[dict]] = {b: [] for b in range(len(prompts))}
    V = None
    while not session.done:
        d = session.drafts()
        V = int(d.p_probs.shape[-1])
        q_hat = {kk: [float(truncated_draft(q, kk)[t]) for q, t in zip(d.q_probs, d.tokens)]
                 for kk in k_choices if kk < V}
        res = session.commit(np.ones(len(d.rows), dtype=bool))
        for j, b in enumerate(res.rows):
            p_d, q_d, uniform = float(res.p_draft[j]), float(res.q_draft[j]), float(res.uniform[j])
            row = {"position": len(rows[b]), "draft": int(res.draft[j]), "token": int(res.token[j]),
                   "accepted": bool(res.accepted[j]), "q_draft": q_d, "p_draft": p_d, "beta": float(res.beta[j]),
                   "uniform": uniform, **{name: float(v[j]) for name, v in res.signals.items()}}
            for kk in k_choices:
                qh = q_hat[kk][j] if kk < V else q_d
                row[f"beta_k{kk}"] = max(0.0, 1.0 - p_d / qh) if qh > 0 else 0.0
                row[f"accepted_k{kk}"] = (bool(res.accepted[j]) if config.mode == "greedy"
                                          else bool(uniform * qh < p_d or qh <= 0.0))
            row["end"] = bool(res.end[j])
            rows[b].append(row)
    out: dict[str, list] = {}
    for b in range(len(prompts)):
        for r in rows[b]:
            r["prompt_local"] = b
            for key, val in r.items():
                out.setdefault(key, []).append(val)
    out["vocab_size"] = V
    return out


def measure_step_times(pair, prompt_ids, config, n_tokens: int = 12, catchup: int = 8) -> dict[str, float]:
    """Median single-prompt SLM step, LLM step, and LLM catch-up time per extra token (seconds)."""
    import torch

    from hlm_gym.lm.decoding import DecoderConfig, HybridSession

    cfg = DecoderConfig(mode=config.mode, max_new_tokens=n_tokens, temperature=config.temperature,
                        k=config.k, theta_max=config.theta_max, stop_at_eos=False)
    s = HybridSession(pair, torch.as_tensor(prompt_ids), cfg, seed=0)
    slm, llm = [], []
    while not s.done:
        r = s.commit(True)
        slm.append(r.slm_s)
        llm.append(r.llm_s)
    ids = torch.as_tensor(prompt_ids).reshape(1, -1).to(pair.device)
    times = {1: [], catchup + 1: []}
    with torch.inference_mode():
        for _ in range(3):
            for n in times:
                base = pair.llm(ids, use_cache=True).cache
                x = torch.tensor([s.output[:n] + [0] * max(0, n - len(s.output))], device=pair.device)
                t0 = time.perf_counter()
                pair.llm(x, cache=base, use_cache=True)
                times[n].append(time.perf_counter() - t0)
    t1, tn = statistics.median(times[1]), statistics.median(times[catchup + 1])
    return {"slm_step_s": statistics.median(slm[1:] or slm), "llm_step_s": statistics.median(llm[1:] or llm),
            "llm_catchup_per_token_s": max(0.0, (tn - t1) / catchup)}


def _token_text(tokenizer, ids) -> dict[str, str]:
    out = {}
    for i in sorted(set(int(x) for x in ids)):
        try:
            out[str(i)] = tokenizer.decode([i])
        except Exception:  # a stand-in tokenizer without decode
            out[str(i)] = f"<{i}>"
    return out


def _columns_to_table(cols: dict[str, list], k_choices, prompt_offset: int, prompts: Sequence[TracePrompt]):
    import pyarrow as pa

    n = len(cols["position"])
    arrays = {
        "prompt": pa.array(np.asarray(cols["prompt_local"], dtype=np.int32) + prompt_offset),
        "position": pa.array(np.asarray(cols["position"], dtype=np.int16)),
        "draft": pa.array(np.asarray(cols["draft"], dtype=np.int32)),
        "token": pa.array(np.asarray(cols["token"], dtype=np.int32)),
        "accepted": pa.array(np.asarray(cols["accepted"], dtype=bool)),
        "end": pa.array(np.asarray(cols["end"], dtype=bool)),
    }
    for s in SIGNALS:
        arrays[s] = pa.array(np.asarray(cols[s], dtype=np.float16))
    for s in ("q_draft", "p_draft", "beta", "uniform"):
        arrays[s] = pa.array(np.asarray(cols[s], dtype=np.float32))
    for k in k_choices:
        bk, ak = k_columns(k)
        arrays[bk] = pa.array(np.asarray(cols[bk], dtype=np.float16))
        arrays[ak] = pa.array(np.asarray(cols[ak], dtype=bool))
    pids = [list(prompts[cols["prompt_local"][i]].ids) if cols["position"][i] == 0 else None for i in range(n)]
    arrays["prompt_ids"] = pa.array(pids, type=pa.list_(pa.int32()))
    return pa.table(arrays)


def check_output(out: str | os.PathLike, overwrite: bool = False, label: str = "output") -> Path:
    """Check that the trace file ``out`` can be written, before any work; returns it as a :class:`Path`.

    Refused with a one-line :class:`TraceError` (``label`` names the flag, e.g. ``--out``): a
    path that is a folder; an existing file unless ``overwrite``; a path under a file; a folder
    that cannot be written; a part folder ``<out>.parts`` that is not a folder.
    """
    out = Path(out)
    if out.is_dir() or str(out).endswith(os.sep):
        raise TraceError(f"{label} {out} is a folder; give the path of a .parquet file")
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise TraceError(f"{label} {out} exists and is not a regular file")
        if not overwrite:
            raise TraceError(f"{label} {out} already exists; pass --overwrite to replace it, or choose another path")
    parts = _parts_dir(out)
    if parts.exists() and not parts.is_dir():
        raise TraceError(f"{label} {out}: its part folder {parts} exists and is not a folder; remove it")
    problem = folder_problem(out.parent)
    if problem:
        raise TraceError(f"{label} {out}: {problem}")
    return out


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _parts_note(parts_dir: Path) -> str:
    """What an interrupted build leaves behind (removing the part folder if it is empty)."""
    parts = sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []
    if not parts:
        with contextlib.suppress(OSError):
            parts_dir.rmdir()
        return "no finished chunks; nothing was left behind"
    return (f"{len(parts)} finished chunk(s) kept in {parts_dir} for resuming: rerun the same command "
            "(same settings and output) to continue, or delete the folder")


def _chunk_fingerprint(settings: dict, chunk: Sequence[TracePrompt]) -> str:
    import hashlib

    blob = json.dumps([settings, [(p.id, p.seed, list(p.ids)) for p in chunk]], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _write_parquet(table, path: Path, **kwargs) -> None:
    """Write ``table`` to ``path`` through a unique temporary sibling (removed on any failure)."""
    import pyarrow.parquet as pq

    from hlm_gym.paths import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


@dataclass(frozen=True)
class PairLoader:
    """How a worker process loads the model pair: ``factory`` (``"module:function"``) called with
    ``kwargs``; hashable, so each worker loads it once (:func:`worker_pair`)."""

    factory: str = "hlm_gym.lm.models:load_pair"
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self) -> Any:
        import importlib

        module, _, name = self.factory.partition(":")
        return getattr(importlib.import_module(module), name)(**dict(self.kwargs))


@functools.lru_cache(maxsize=2)
def worker_pair(loader: PairLoader) -> Any:
    """The pair ``loader`` loads, once per process."""
    return loader()


def trace_chunk(pair, chunk: Sequence[TracePrompt], config, k_choices: tuple[int, ...], prompt_offset: int):
    """The trace table of one chunk of prompts (rows numbered from ``prompt_offset``)."""
    eos = getattr(pair.tokenizer, "eos_token_id", None)
    cols = trace_batch(pair, chunk, config, k_choices, eos_token_id=eos)
    cols.pop("vocab_size", None)
    return _columns_to_table(cols, k_choices, prompt_offset, chunk)


def _trace_chunk_job(loader: PairLoader, chunk: Sequence[TracePrompt], config, k_choices: tuple[int, ...],
                     prompt_offset: int):
    """A worker's job: load the pair (once per worker) and trace one chunk; its table and seconds."""
    t0 = time.perf_counter()
    table = trace_chunk(worker_pair(loader), chunk, config, k_choices, prompt_offset)
    return table, time.perf_counter() - t0


def _trace_chunks(pair, prompts: Sequence[TracePrompt], config, k_choices: tuple[int, ...], batch_size: int,
                  parts_dir: Path, settings: dict, resume: bool, log, runner=None, loader: PairLoader | None = None,
                  threads: int = 1) -> list:
    """Trace ``prompts`` chunk by chunk, writing (or reusing) one part file per chunk; returns the tables.

    With a ``runner`` (``--backend ray``) the chunks to trace are its jobs (the pair loaded in each
    worker by ``loader``, ``threads`` CPU threads each, one GPU each when the pair is on a GPU); their
    tables come back here and are written as part files as they arrive, so the parts, and the merged
    file, are those of a build in this process."""
    import pyarrow.parquet as pq

    n_chunks = math.ceil(len(prompts) / batch_size)
    plan = []
    for c0 in range(0, len(prompts), batch_size):
        chunk = list(prompts[c0:c0 + batch_size])
        name = f"part-{c0 // batch_size:05d}-{_chunk_fingerprint(settings, chunk)}.parquet"
        plan.append((c0, chunk, parts_dir / name))
    tables: list = [None] * len(plan)
    for j, (_c0, _chunk, part) in enumerate(plan):
        if resume and part.is_file():
            try:
                tables[j] = pq.read_table(part)
                log(f"chunk {j}: reused {part.name}")
            except Exception:  # a damaged part: trace the chunk again
                part.unlink(missing_ok=True)
    todo = [j for j, t in enumerate(tables) if t is None]

    def done(j: int, table, dt: float) -> None:
        _write_parquet(table, plan[j][2], compression="zstd")
        tables[j] = table
        log(f"chunk {j + 1}/{n_chunks}: {table.num_rows} tokens "
            f"in {dt:.1f} s ({table.num_rows / max(dt, 1e-9):.1f} tok/s)")

    if runner is None:
        for j in todo:
            t0 = time.perf_counter()
            c0, chunk, _part = plan[j]
            done(j, trace_chunk(pair, chunk, config, k_choices, c0), time.perf_counter() - t0)
        return tables
    from hlm_gym.parallel import Job

    if loader is None:
        raise TraceError("a distributed trace build needs a PairLoader (how its workers load the models)")
    gpus = 1.0 if str(getattr(pair, "device", "cpu")).startswith("cuda") else 0.0
    jobs = [Job(_trace_chunk_job, (loader, plan[j][1], config, k_choices, plan[j][0]), label=f"chunk {j + 1}",
                cpus=threads, gpus=gpus) for j in todo]
    runner.run(jobs, on_result=lambda k, res: done(todo[k], *res))
    return tables


def _build_meta(pair, prompts: Sequence[TracePrompt], config, k_choices, table, t_start: float) -> dict:
    lengths = np.bincount(table.column("prompt").to_numpy(), minlength=len(prompts))
    token_ids = np.concatenate([table.column("draft").to_numpy(), table.column("token").to_numpy()])
    return {
        "schema_version": SCHEMA_VERSION,
        "slm_name": pair.slm_name, "llm_name": pair.llm_name,
        "slm_fingerprint": pair.slm_fingerprint, "llm_fingerprint": pair.llm_fingerprint,
        "mode": config.mode, "temperature": config.temperature, "top_p": getattr(config, "top_p", 1.0),
        "k": config.k, "theta_max": config.theta_max,
        "max_new_tokens": config.max_new_tokens, "stop_at_eos": config.stop_at_eos,
        "k_choices": list(k_choices), "vocab_size": pair.vocab_size,
        "eos_token_id": getattr(pair.tokenizer, "eos_token_id", None),
        "prompts": [{"id": p.id, "split": p.split, "seed": int(p.seed), "n_tokens": int(n)}
                    for p, n in zip(prompts, lengths)],
        "token_text": _token_text(pair.tokenizer, token_ids),
        "build_seconds": round(time.perf_counter() - t_start, 2),
        "build_command": " ".join(sys.argv),
        "created_unix": int(time.time()),
    }


def _remove_parts(parts_dir: Path) -> None:
    for f in parts_dir.glob("part-*.parquet"):
        f.unlink(missing_ok=True)  # a concurrent build of the same output may have removed it
    with contextlib.suppress(OSError):
        parts_dir.rmdir()


def build_traces(pair, prompts: Sequence[TracePrompt], config, out: str | os.PathLike,
                 k_choices: Sequence[int] = DEFAULT_K_CHOICES, batch_size: int = 8, extra_meta: dict | None = None,
                 measure: bool = True, log=None, resume: bool = True, overwrite: bool = True,
                 on_stop=None, runner=None, loader: PairLoader | None = None, job_threads: int = 1) -> Path:
    """Trace ``prompts`` with always-send and write the Parquet file ``out`` (resumable by chunk).

    ``out`` is checked first (:func:`check_output`; an existing file is replaced only with
    ``overwrite``). Each chunk of ``batch_size`` prompts is written to
    ``<out>.parts/part-XXXXX-<fingerprint>.parquet``; an existing part whose fingerprint
    (settings + prompt ids) matches is reused. The parts are merged into ``out`` at the end and
    the part folder is removed. Every file goes through a unique temporary name, so a failure
    or Ctrl-C leaves no temporary file, only the finished parts; ``on_stop`` (default ``log``)
    receives the line saying so before the exception propagates.

    With a ``runner`` (:mod:`hlm_gym.parallel`, e.g. ``--backend ray``) the chunks are traced by
    its workers, each loading the pair with ``loader`` and using ``job_threads`` CPU threads; the
    chunks, their seeds and the merge are the same, so the file equals a build in this process.
    """
    import pyarrow as pa

    out = check_output(out, overwrite)
    if not prompts:
        raise TraceError("no prompts to trace")
    if batch_size < 1:
        raise TraceError(f"batch size must be a positive integer, got {batch_size}")
    log = log or (lambda msg: None)
    on_stop = on_stop or log
    k_choices = tuple(sorted(int(k) for k in k_choices))
    settings = {"mode": config.mode, "temperature": config.temperature, "k": config.k,
                "theta_max": config.theta_max, "max_new_tokens": config.max_new_tokens,
                "stop_at_eos": config.stop_at_eos, "k_choices": list(k_choices),
                "slm_fingerprint": pair.slm_fingerprint, "llm_fingerprint": pair.llm_fingerprint}
    parts_dir = _parts_dir(out)
    t_start = time.perf_counter()
    try:
        parts_dir.mkdir(parents=True, exist_ok=True)
        table = pa.concat_tables(_trace_chunks(pair, prompts, config, k_choices, batch_size, parts_dir,
                                               settings, resume, log, runner, loader, job_threads))
        meta = _build_meta(pair, prompts, config, k_choices, table, t_start)
        if measure:
            meta.update(measure_step_times(pair, prompts[0].ids, config))
        meta.update(extra_meta or {})
        md = dict(table.schema.metadata or {})
        md[META_KEY] = json.dumps(meta).encode("utf-8")
        _write_parquet(table.replace_schema_metadata(md), out, compression="zstd", compression_level=9)
    except OSError as exc:
        raise TraceError(f"cannot write traces for {out}: {exc}; {_parts_note(parts_dir)}") from None
    except BaseException:
        on_stop(f"trace build stopped: {_parts_note(parts_dir)}")
        raise
    _remove_parts(parts_dir)
    log(f"wrote {out} ({table.num_rows} tokens, {len(prompts)} prompts, {out.stat().st_size / 1e6:.2f} MB)")
    return out


def sharegpt_trace_prompts(tokenizer, split: str, n: int, seed: int, offset: int = 0,
                           max_prompt_tokens: int | None = None) -> list[TracePrompt]:
    """The first ``n`` ShareGPT prompts of ``split`` (after ``offset``), tokenised, seeded ``seed + index``.

    ``index`` counts the split's prompts in file order (before the length filter), so a prompt
    keeps its seed whatever ``n`` or ``max_prompt_tokens`` is. Prompts longer than
    ``max_prompt_tokens`` (chat template included) are left out.
    """
    from hlm_gym.lm.prompts import chat_input_ids, sharegpt_prompts

    out = []
    for i, p in enumerate(sharegpt_prompts(split)):
        if i < offset:
            continue
        ids = tuple(int(x) for x in chat_input_ids(tokenizer, p.text))
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            continue
        out.append(TracePrompt(p.id, split, ids, seed + i))
        if len(out) >= n:
            break
    return out
