"""Per-token traces of the hybrid loop with always-send: schema, builder and loader.

A trace file is one Parquet table (zstd), one row per output token, rows grouped by prompt
and ordered by position. Everything the trace-driven environments need to replay a response
under any skip/send/top-k policy is recorded:

==================  ========  =============================================================
column              type      meaning
==================  ========  =============================================================
``prompt``          int32     index of the prompt in the file (``meta["prompts"]``)
``position``        int16     position of the token in the response (0-based)
``draft``           int32     the SLM's draft ``d``
``token``           int32     the output token (``d`` if accepted, else the LLM's resample)
``accepted``        bool      ``d`` accepted with the recorded uniform (full distribution)
``end``             bool      last token of the response (EOS or the length limit)
``u`` ...           float16   the signals of :data:`hlm_gym.uncertainty.SIGNAL_NAMES`
                              (``entropy`` in nats)
``q_draft``         float32   ``q(d)``, the SLM's probability of the draft
``p_draft``         float32   ``p(d)``, the LLM's probability of the draft
``beta``            float32   rejection probability ``max(0, 1 - p(d)/q(d))``
``uniform``         float32   the uniform draw of the verification (NaN in greedy mode)
``beta_k{K}``       float16   rejection probability against CU-HLM's top-``K`` ``q_hat``
``accepted_k{K}``   bool      ``d`` accepted against ``q_hat_K`` with the same uniform
``prompt_ids``      list      the prompt's token ids (on the ``position == 0`` row only)
==================  ========  =============================================================

The schema metadata key ``hlm_gym`` holds JSON: ``schema_version``, model names and
fingerprints, decoding settings (mode, temperature, K, theta_max, max_new_tokens), the base
seed, ``k_choices``, ``vocab_size``, ``eos_token_id``, measured step times (median SLM
step, LLM step, LLM catch-up time per extra token), the per-prompt list (id, split, seed,
number of tokens), the text of every token id that appears (for ``render``) and the build
command.

Seeding: prompt ``i`` of a build is decoded with seed ``seed + index`` where ``index`` is
its position in the requested prompt list; :class:`hlm_gym.decoding.HybridSession` with that
seed reproduces the row (the live environment relies on this).

The builder decodes ``batch_size`` prompts at once (left padding, attention mask and KV
caches in both models; always-send never has pending tokens, so both models see the same
token stream), with the per-prompt generators and draw order of ``HybridSession``. Chunks are
written as part files next to the output so that an interrupted build resumes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

SCHEMA_VERSION = 1
META_KEY = b"hlm_gym"
DEFAULT_K_CHOICES = (8, 64, 512)
SIGNALS = ("u", "entropy", "top1_prob", "margin", "saturation")
BASE_COLUMNS = ("prompt", "position", "draft", "token", "accepted", "end") + SIGNALS + (
    "q_draft", "p_draft", "beta", "uniform")
SPLITS = ("train", "validation", "test")


class TraceError(ValueError):
    """A trace file is missing, unreadable, incomplete or of an unsupported schema version."""


def k_columns(k: int) -> tuple[str, str]:
    """Names of the per-``k`` columns (rejection probability, acceptance)."""
    return f"beta_k{k}", f"accepted_k{k}"


# ----------------------------------------------------------------------------------- loader
@dataclass
class Traces:
    """A loaded trace file: numpy columns plus per-prompt offsets and metadata.

    ``columns[name]`` is a numpy array over all token rows; prompt ``i`` occupies rows
    ``offsets[i]:offsets[i + 1]``.
    """

    path: str
    meta: dict
    columns: dict[str, np.ndarray]
    offsets: np.ndarray
    k_choices: tuple[int, ...] = field(default=())

    @property
    def n_prompts(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def prompt_seeds(self) -> np.ndarray:
        return np.asarray([p["seed"] for p in self.meta["prompts"]], dtype=np.int64)

    @property
    def prompt_ids_list(self) -> list[str]:
        return [p["id"] for p in self.meta["prompts"]]

    def token_text(self, token_id: int) -> str:
        """The text of a token id (from the file's metadata), or ``<id>`` if unknown."""
        return self.meta.get("token_text", {}).get(str(int(token_id)), f"<{int(token_id)}>")

    def prompt_token_ids(self, index: int) -> np.ndarray:
        """The token ids of prompt ``index`` (read lazily from the file)."""
        if hasattr(self, "_source"):
            parent, mapping = self._source
            return parent.prompt_token_ids(mapping[int(index)])
        if not hasattr(self, "_prompt_ids"):
            import pyarrow.parquet as pq

            table = pq.read_table(self.path, columns=["prompt", "position", "prompt_ids"])
            pos = table.column("position").to_numpy()
            pr = table.column("prompt").to_numpy()
            lists = table.column("prompt_ids").to_pylist()
            self._prompt_ids = {int(pr[i]): np.asarray(lists[i], dtype=np.int64)
                                for i in np.flatnonzero(pos == 0)}
        return self._prompt_ids[int(index)]

    def subset(self, prompts: Sequence[int]) -> "Traces":
        """A new :class:`Traces` restricted to the given prompt indices (in that order)."""
        idx = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in prompts])
        cols = {k: v[idx] for k, v in self.columns.items()}
        lens = self.lengths[list(prompts)]
        cols["prompt"] = np.repeat(np.arange(len(prompts), dtype=np.int32), lens)
        meta = dict(self.meta)
        meta["prompts"] = [self.meta["prompts"][i] for i in prompts]
        out = Traces(self.path, meta, cols, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
                     self.k_choices)
        out._source = (self, [int(i) for i in prompts])
        return out


def read_meta(path: str | os.PathLike) -> dict:
    """The JSON metadata of a trace file (validated), without reading the columns."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise TraceError(f"trace file not found: {p}")
    try:
        schema = pq.read_schema(p)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for non-Parquet input
        raise TraceError(f"cannot read trace file {p}: not a valid Parquet file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"trace file {p} has no hlm_gym metadata: not a trace file")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"trace file {p} has corrupt metadata: {exc}") from None
    version = meta.get("schema_version")
    if not isinstance(version, int):
        raise TraceError(f"trace file {p} has no integer schema_version in its metadata")
    if version > SCHEMA_VERSION:
        raise TraceError(f"trace file {p} has schema version {version}, newer than the supported "
                         f"version {SCHEMA_VERSION}; upgrade hlm-gym or rebuild the traces")
    for key in ("vocab_size", "k_choices", "prompts", "max_new_tokens", "mode"):
        if key not in meta:
            raise TraceError(f"trace file {p} metadata lacks {key!r}")
    missing = [c for c in BASE_COLUMNS if c not in schema.names]
    for k in meta["k_choices"]:
        missing += [c for c in k_columns(k) if c not in schema.names]
    if missing:
        raise TraceError(f"trace file {p} lacks columns {missing}")
    return meta


def load_traces(path: str | os.PathLike) -> Traces:
    """Read a trace file into numpy columns (no per-row Python objects); raises :class:`TraceError`."""
    import pyarrow.parquet as pq

    meta = read_meta(path)
    k_choices = tuple(int(k) for k in meta["k_choices"])
    names = list(BASE_COLUMNS) + [c for k in k_choices for c in k_columns(k)]
    try:
        table = pq.read_table(path, columns=names)
    except Exception as exc:
        raise TraceError(f"cannot read trace file {path}: corrupt data ({type(exc).__name__})") from None
    cols = {}
    for name in names:
        col = table.column(name)
        if col.null_count:
            raise TraceError(f"trace file {path}: column {name!r} has {col.null_count} missing values")
        cols[name] = col.to_numpy()
    # u is a count over K temperature samples, stored as float16: snap it back to its exact grid
    # so that thresholds at multiples of 1/K behave as in live decoding.
    k = int(meta.get("k", 0))
    if k > 0:
        cols["u"] = (np.round(cols["u"].astype(np.float64) * k) / k).astype(np.float32)
    prompt = cols["prompt"]
    n_prompts = len(meta["prompts"])
    if len(prompt) == 0:
        raise TraceError(f"trace file {path} has no token rows")
    if np.any(np.diff(prompt) < 0) or prompt[0] != 0 or prompt[-1] != n_prompts - 1:
        raise TraceError(f"trace file {path}: rows are not grouped by prompt 0..{n_prompts - 1}")
    counts = np.bincount(prompt, minlength=n_prompts)
    if np.any(counts == 0):
        raise TraceError(f"trace file {path}: some prompts have no tokens")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Traces(str(path), meta, cols, offsets, k_choices)


# ---------------------------------------------------------------------------------- builder
@dataclass(frozen=True)
class TracePrompt:
    """One prompt to trace: its id, split, token ids and decoding seed."""

    id: str
    split: str
    ids: tuple[int, ...]
    seed: int


def _row_signals(logits, d, gen, h_prev, h_last, k, theta_max):
    from hlm_gym.uncertainty import compute_signals

    sig = compute_signals(logits, d, gen, h_prev, h_last, k=k, theta_max=theta_max)
    return {name: float(v) for name, v in sig.items()}


def trace_batch(pair, prompts: Sequence[TracePrompt], config, k_choices: Sequence[int] = DEFAULT_K_CHOICES,
                eos_token_id: int | None = None) -> dict[str, list]:
    """Decode ``prompts`` together with always-send; returns column lists (rows grouped by prompt).

    Equivalent to :class:`hlm_gym.decoding.HybridSession` with ``seed=prompt.seed`` and
    ``commit(True)`` at every step (up to float-level differences of batched matmuls).
    """
    import torch

    from hlm_gym.speculative import truncated_draft, verify_detailed, verify_greedy

    if eos_token_id is None:
        eos_token_id = getattr(pair.tokenizer, "eos_token_id", None)
    dev = pair.device
    B = len(prompts)
    gens = []
    for pr in prompts:
        row = []
        for offset in range(3):
            g = torch.Generator(device="cpu")
            g.manual_seed(int(pr.seed) * 3 + offset)
            row.append(g)
        gens.append(row)
    lens = [len(pr.ids) for pr in prompts]
    if min(lens) < 1:
        raise TraceError("empty prompt: at least one token is needed")
    L = max(lens)
    pad = 0
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for b, pr in enumerate(prompts):
        ids[b, L - lens[b]:] = torch.tensor(pr.ids, dtype=torch.long)
        mask[b, L - lens[b]:] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    rows: dict[int, list[dict]] = {b: [] for b in range(B)}
    active = list(range(B))  # original indices of the rows still in the caches
    slm_cache = llm_cache = None
    T = config.temperature
    V = None
    with torch.inference_mode():
        inp, m, ps = ids, mask, pos
        while active:
            so = pair.slm(inp.to(dev), attention_mask=m.to(dev), position_ids=ps.to(dev),
                          past_key_values=slm_cache, use_cache=True, output_hidden_states=True)
            lo = pair.llm(inp.to(dev), attention_mask=m.to(dev), position_ids=ps.to(dev),
                          past_key_values=llm_cache, use_cache=True)
            slm_cache, llm_cache = so.past_key_values, lo.past_key_values
            s_logits = (so.logits[:, -1].float() / T).cpu()
            h_prev = so.hidden_states[-2][:, -1].cpu()
            h_last = so.hidden_states[-1][:, -1].cpu()
            p_all = torch.softmax(lo.logits[:, -1].float() / T, dim=-1).cpu()
            V = s_logits.shape[-1]
            next_tokens, keep = [], []
            for j, b in enumerate(active):
                dg, sg, vg = gens[b]
                logits = s_logits[j]
                q = torch.softmax(logits, dim=-1)
                if config.mode == "greedy":
                    d = int(torch.argmax(q))
                else:
                    d = int(torch.multinomial(q, 1, generator=dg))
                sig = _row_signals(logits, d, sg, h_prev[j], h_last[j], config.k, config.theta_max)
                p = p_all[j]
                q_d, p_d = float(q[d]), float(p[d])
                if config.mode == "greedy":
                    accepted, token = verify_greedy(p, d)
                    uniform = math.nan
                    beta = max(0.0, 1.0 - p_d / q_d) if q_d > 0 else 0.0
                else:
                    v = verify_detailed(q, p, d, vg)
                    accepted, token, uniform, beta = v.accepted, v.token, v.uniform, v.beta
                row = {"position": len(rows[b]), "draft": d, "token": token, "accepted": bool(accepted),
                       "q_draft": q_d, "p_draft": p_d, "beta": beta, "uniform": uniform, **sig}
                for kk in k_choices:
                    qh = float(truncated_draft(q, kk)[d]) if kk < V else q_d
                    bk = max(0.0, 1.0 - p_d / qh) if qh > 0 else 0.0
                    if config.mode == "greedy":
                        ak = bool(accepted)
                    else:
                        ak = bool(uniform * qh < p_d or qh <= 0.0)
                    row[f"beta_k{kk}"], row[f"accepted_k{kk}"] = bk, ak
                rows[b].append(row)
                end = (config.stop_at_eos and token == eos_token_id) or len(rows[b]) >= config.max_new_tokens
                row["end"] = bool(end)
                if not end:
                    keep.append(j)
                    next_tokens.append(token)
            if len(keep) < len(active):
                if not keep:
                    break
                sel = torch.tensor(keep, dtype=torch.long, device=dev)
                slm_cache.batch_select_indices(sel)
                llm_cache.batch_select_indices(sel)
                m = m[keep]
                ps = ps[keep]
                active = [active[j] for j in keep]
            inp = torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1)
            m = torch.cat([m, torch.ones((len(active), 1), dtype=torch.long)], dim=1)
            ps = ps[:, -1:] + 1
    out: dict[str, list] = {}
    for b in range(B):
        for r in rows[b]:
            r["prompt_local"] = b
            for key, val in r.items():
                out.setdefault(key, []).append(val)
    out["vocab_size"] = V
    return out


def measure_step_times(pair, prompt_ids, config, n_tokens: int = 12, catchup: int = 8) -> dict[str, float]:
    """Median single-prompt SLM step, LLM step, and LLM catch-up time per extra token (seconds)."""
    import torch

    from hlm_gym.decoding import DecoderConfig, HybridSession

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
                base = pair.llm(ids, use_cache=True).past_key_values
                x = torch.tensor([s.output[:n] + [0] * max(0, n - len(s.output))], device=pair.device)
                t0 = time.perf_counter()
                pair.llm(x, past_key_values=base, use_cache=True)
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


def build_traces(pair, prompts: Sequence[TracePrompt], config, out: str | os.PathLike,
                 k_choices: Sequence[int] = DEFAULT_K_CHOICES, batch_size: int = 8, extra_meta: dict | None = None,
                 measure: bool = True, log=None, resume: bool = True) -> Path:
    """Trace ``prompts`` with always-send and write the Parquet file ``out`` (resumable by chunk).

    Each chunk of ``batch_size`` prompts is written to ``<out>.parts/part-XXXXX.parquet``;
    an existing part whose fingerprint (settings + prompt ids) matches is reused. The parts
    are merged into ``out`` (atomically) at the end and the part folder is removed.
    """
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    log = log or (lambda msg: None)
    k_choices = tuple(sorted(int(k) for k in k_choices))
    settings = {"mode": config.mode, "temperature": config.temperature, "k": config.k,
                "theta_max": config.theta_max, "max_new_tokens": config.max_new_tokens,
                "stop_at_eos": config.stop_at_eos, "k_choices": list(k_choices),
                "slm_fingerprint": pair.slm_fingerprint, "llm_fingerprint": pair.llm_fingerprint}
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    vocab = pair.vocab_size
    eos = getattr(pair.tokenizer, "eos_token_id", None)
    t_start = time.perf_counter()
    n_tok = 0
    tables = []
    for c0 in range(0, len(prompts), batch_size):
        chunk = list(prompts[c0:c0 + batch_size])
        fp = hashlib.sha256(json.dumps([settings, [(p.id, p.seed, list(p.ids)) for p in chunk]],
                                       sort_keys=True).encode()).hexdigest()[:16]
        part = parts_dir / f"part-{c0 // batch_size:05d}-{fp}.parquet"
        if resume and part.is_file():
            try:
                tables.append(pq.read_table(part))
                log(f"chunk {c0 // batch_size}: reused {part.name}")
                continue
            except Exception:
                part.unlink()
        t0 = time.perf_counter()
        cols = trace_batch(pair, chunk, config, k_choices, eos_token_id=eos)
        cols.pop("vocab_size", None)
        table = _columns_to_table(cols, k_choices, c0, chunk)
        tmp = part.with_suffix(".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, part)
        tables.append(table)
        n_tok += table.num_rows
        dt = time.perf_counter() - t0
        log(f"chunk {c0 // batch_size + 1}/{math.ceil(len(prompts) / batch_size)}: {table.num_rows} tokens "
            f"in {dt:.1f} s ({table.num_rows / max(dt, 1e-9):.1f} tok/s)")
    table = pa.concat_tables(tables)
    lengths = np.bincount(table.column("prompt").to_numpy(), minlength=len(prompts))
    token_ids = np.concatenate([table.column("draft").to_numpy(), table.column("token").to_numpy()])
    meta = {
        "schema_version": SCHEMA_VERSION,
        "slm_name": pair.slm_name, "llm_name": pair.llm_name,
        "slm_fingerprint": pair.slm_fingerprint, "llm_fingerprint": pair.llm_fingerprint,
        "mode": config.mode, "temperature": config.temperature, "k": config.k, "theta_max": config.theta_max,
        "max_new_tokens": config.max_new_tokens, "stop_at_eos": config.stop_at_eos,
        "k_choices": list(k_choices), "vocab_size": vocab, "eos_token_id": eos,
        "prompts": [{"id": p.id, "split": p.split, "seed": int(p.seed), "n_tokens": int(n)}
                    for p, n in zip(prompts, lengths)],
        "token_text": _token_text(pair.tokenizer, token_ids),
        "build_seconds": round(time.perf_counter() - t_start, 2),
        "build_command": " ".join(sys.argv),
        "created_unix": int(time.time()),
    }
    if measure and prompts:
        meta.update(measure_step_times(pair, prompts[0].ids, config))
    if extra_meta:
        meta.update(extra_meta)
    md = dict(table.schema.metadata or {})
    md[META_KEY] = json.dumps(meta).encode("utf-8")
    table = table.replace_schema_metadata(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", compression_level=9)
    os.replace(tmp, out)
    for f in parts_dir.glob("part-*.parquet"):
        f.unlink()
    try:
        parts_dir.rmdir()
    except OSError:
        pass
    log(f"wrote {out} ({table.num_rows} tokens, {len(prompts)} prompts, {out.stat().st_size / 1e6:.2f} MB)")
    return out


def sharegpt_trace_prompts(tokenizer, split: str, n: int, seed: int, offset: int = 0,
                           max_prompt_tokens: int | None = None) -> list[TracePrompt]:
    """The first ``n`` ShareGPT prompts of ``split`` (after ``offset``), tokenised, seeded ``seed + index``.

    ``index`` counts the split's prompts in file order (before the length filter), so a prompt
    keeps its seed whatever ``n`` or ``max_prompt_tokens`` is. Prompts longer than
    ``max_prompt_tokens`` (chat template included) are left out.
    """
    from hlm_gym.prompts import chat_input_ids, sharegpt_prompts

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


def default_trace_path(split: str) -> Path:
    """The shipped trace file of ``split`` (``hlm_gym/data/traces/embedded-<split>.parquet``)."""
    from hlm_gym.paths import data_dir

    if split not in SPLITS:
        raise TraceError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return data_dir() / "traces" / f"embedded-{split}.parquet"


def summarize(traces: Traces) -> dict:
    """Headline numbers of a trace file (for ``hlm-gym traces info``)."""
    c = traces.columns
    m = traces.meta
    out = {"path": traces.path, "schema_version": m["schema_version"], "prompts": traces.n_prompts,
           "tokens": traces.n_tokens, "mean_length": round(float(traces.lengths.mean()), 1),
           "slm": m.get("slm_name"), "llm": m.get("llm_name"), "mode": m["mode"],
           "max_new_tokens": m["max_new_tokens"], "vocab_size": m["vocab_size"], "k_choices": m["k_choices"],
           "acceptance": round(float(c["accepted"].mean()), 4), "mean_beta": round(float(c["beta"].mean()), 4),
           "mean_u": round(float(c["u"].astype(np.float64).mean()), 4)}
    for k in traces.k_choices:
        out[f"acceptance_k{k}"] = round(float(c[f"accepted_k{k}"].mean()), 4)
    for key in ("slm_step_s", "llm_step_s", "llm_catchup_per_token_s", "build_seconds"):
        if key in m:
            out[key] = m[key]
    if "file_bytes" not in out and os.path.exists(traces.path):
        out["file_mb"] = round(os.path.getsize(traces.path) / 1e6, 3)
    splits = sorted({p["split"] for p in m["prompts"]})
    out["splits"] = splits
    return out
