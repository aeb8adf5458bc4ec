"""Per-(token, layer) traces of the MoE made from the embedded model: schema, validation, load and save.

A WDMoE trace file records, on real text, everything needed to price any expert selection of
``hlm_gym/WDMoE-v0`` without running the model: for each decode step of a teacher-forced
reply and each MoE layer, the router's scores, the Gram matrix of the experts' output vectors
(the MLP error of dropping the experts ``D`` is ``u^T G u``, ``u`` the indicator of ``D``) and
the squared norm of the residual stream the MLP output is added to.

Decode steps: for a chat-templated prompt ``p`` (``m`` tokens) and its reference reply ``r``
(``n`` tokens, cut at ``max_tokens``; ``<|im_end|>`` closes it when it fits), the sequence
``p + r`` is teacher-forced and step ``j = 0..n-1`` is position ``m - 1 + j``: it processes
token ``(p + r)[m - 1 + j]`` and predicts ``r[j]``, the step's ``token_id``.

One Parquet table (zstd), one row per (prompt, step, layer), ordered so, layer fastest:

===================  ========  ==============================================================
column               type      meaning
===================  ========  ==============================================================
``prompt``           int32     prompt index 0..P-1 (``meta["prompt_ids"]``)
``position``         int16     decode step ``j`` within the prompt's reply
``layer``            int16     MoE layer 0..L-1
``token_id``         int32     ``r[j]``, the reply token the step predicts (same on all L rows)
``score_{e}``        float16   the router's gate weight of expert ``e`` (sum over e = 1)
``gram_{i}_{j}``     float16   ``y_i . y_j / gram_scale`` for ``i <= j`` (in [-1, 1])
``gram_scale``       float32   ``max_e y_e . y_e`` of the row (1 when all outputs vanish)
``residual_norm2``   float32   squared norm of the residual stream before the MLP output is added
===================  ========  ==============================================================

The schema metadata key ``hlm_gym_wdmoe`` holds JSON: ``schema_version``, ``split``,
``prompt_ids`` (ShareGPT conversation ids), ``prompt_token_ids`` (each chat-templated prompt
``p``), ``n_layers``, ``n_experts``, ``hidden_size``, ``expert_intermediate`` (neurons per
expert), ``vocab_size``, ``max_tokens``, ``model_fingerprint``, ``moe_fingerprint`` and the
build command. :func:`load_wdmoe_traces` returns a :class:`WDMoETraces` with float32 arrays:
the full symmetric Gram matrices (scale multiplied back) and the scores renormalised to sum to
exactly 1 (float16 storage leaves them within a few 1e-4 of it). Every load is validated
(:func:`validate_wdmoe_traces`); a bad file is a one-line :class:`TraceError` naming the file,
the column or metadata key, the first bad row and what is allowed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hlm_gym.traces.store import SPLITS, TraceError

__all__ = ["META_KEY", "SCHEMA_VERSION", "WDMoETraces", "default_wdmoe_path", "load_wdmoe_traces",
           "read_wdmoe_meta", "validate_wdmoe_traces", "write_wdmoe_traces"]

SCHEMA_VERSION = 1
META_KEY = b"hlm_gym_wdmoe"
_REQUIRED_META = ("schema_version", "split", "prompt_ids", "n_layers", "n_experts", "hidden_size",
                  "expert_intermediate", "model_fingerprint", "moe_fingerprint")
_SCORE_SUM_TOL = 1e-2   # |sum_e score_e - 1| allowed in a file (float16 storage)
_GRAM_TOL = 2e-3        # Cauchy-Schwarz and symmetry slack, relative to the row's scale


@dataclass(frozen=True)
class WDMoETraces:
    """Loaded WDMoE traces (see the module docstring); rows ordered (prompt, step, layer), layer fastest.

    ``scores`` ``(R, E)``, ``gram`` ``(R, E, E)`` (full, symmetric) and ``residual_norm2`` ``(R,)``
    are float32; ``token_ids`` ``(R // L,)`` int64 holds one token per step; ``prompt_offsets``
    ``(P + 1,)`` int64 are the *row* offsets of each prompt (multiples of ``L``).
    """

    scores: np.ndarray
    gram: np.ndarray
    residual_norm2: np.ndarray
    token_ids: np.ndarray
    prompt_offsets: np.ndarray
    n_layers: int
    n_experts: int
    meta: dict = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        """Number of prompts (episodes)."""
        return len(self.prompt_offsets) - 1

    @property
    def n_rows(self) -> int:
        """Number of (step, layer) rows."""
        return int(self.scores.shape[0])

    @property
    def n_tokens(self) -> int:
        """Number of decode steps over all prompts."""
        return self.n_rows // self.n_layers

    @property
    def token_offsets(self) -> np.ndarray:
        """``(P + 1,)`` offsets of each prompt's steps in ``token_ids``."""
        return self.prompt_offsets // self.n_layers

    def mlp_error(self, keep: np.ndarray) -> np.ndarray:
        """``(R,)`` squared norm of the MLP output lost by keeping only the experts in ``keep`` ``(R, E)`` bool:
        ``u^T G u`` with ``u = ~keep``."""
        u = (~np.asarray(keep, dtype=bool)).astype(np.float32)
        return np.einsum("re,ref,rf->r", u, self.gram, u)


def default_wdmoe_path(split: str) -> Path:
    """The shipped WDMoE trace file of ``split`` (``hlm_gym/data/traces/wdmoe-<split>.parquet``)."""
    from hlm_gym.paths import data_dir

    if split not in SPLITS:
        raise TraceError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return data_dir() / "traces" / f"wdmoe-{split}.parquet"


def _upper(n_experts: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n_experts)


def _score_col(e: int) -> str:
    return f"score_{e}"


def _gram_col(i: int, j: int) -> str:
    return f"gram_{min(i, j)}_{max(i, j)}"


def _columns(n_experts: int) -> list[str]:
    iu, ju = _upper(n_experts)
    return (["prompt", "position", "layer", "token_id"] + [_score_col(e) for e in range(n_experts)]
            + [_gram_col(i, j) for i, j in zip(iu, ju)] + ["gram_scale", "residual_norm2"])


# ----------------------------------------------------------------------------- validation
def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _meta_error(where, key: str, value, allowed: str) -> TraceError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return TraceError(f"WDMoE trace file {where}: metadata key {key!r} = {text}; allowed: {allowed}")


def validate_wdmoe_meta(meta: dict, where: str | os.PathLike = "<traces>") -> None:
    """Check the metadata alone (keys, types, schema version); raises :class:`TraceError`."""
    if not isinstance(meta, dict):
        raise TraceError(f"WDMoE trace file {where}: metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise TraceError(f"WDMoE trace file {where}: metadata lacks {', '.join(map(repr, missing))}")
    version = meta["schema_version"]
    if not _is_int(version) or version < 1:
        raise _meta_error(where, "schema_version", version, f"an integer in 1..{SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise TraceError(f"WDMoE trace file {where} has schema version {version}, newer than the supported version "
                         f"{SCHEMA_VERSION}; upgrade hlm-gym or rebuild the traces")
    if meta["split"] not in SPLITS + ("other",):
        raise _meta_error(where, "split", meta["split"], ", ".join(SPLITS + ("other",)))
    for key, lo in (("n_layers", 1), ("n_experts", 2), ("hidden_size", 1), ("expert_intermediate", 1)):
        if not _is_int(meta[key]) or meta[key] < lo:
            raise _meta_error(where, key, meta[key], f"an integer >= {lo}")
    ids = meta["prompt_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise _meta_error(where, "prompt_ids", ids, "a non-empty list of strings")
    for key in ("model_fingerprint", "moe_fingerprint"):
        if not isinstance(meta[key], str):
            raise _meta_error(where, key, meta[key], "a string")
    vocab = meta.get("vocab_size")
    if vocab is not None and (not _is_int(vocab) or vocab < 2):
        raise _meta_error(where, "vocab_size", vocab, "null or an integer >= 2")
    ptok = meta.get("prompt_token_ids")
    if ptok is not None and (not isinstance(ptok, list) or len(ptok) != len(ids)
                             or not all(isinstance(p, list) and all(_is_int(t) for t in p) for p in ptok)):
        raise _meta_error(where, "prompt_token_ids", ptok,
                          f"null or a list of {len(ids)} lists of token ids (one per prompt)")


def _row_where(traces: WDMoETraces, r: int) -> str:
    layer = r % traces.n_layers
    prompt = int(np.searchsorted(traces.prompt_offsets, r, side="right") - 1)
    step = (r - int(traces.prompt_offsets[prompt])) // traces.n_layers
    return f"prompt {prompt}, position {step}, layer {layer} (row {r})"


def _value_error(where, traces: WDMoETraces, column: str, bad: np.ndarray, values: np.ndarray,
                 allowed: str) -> TraceError:
    rows = np.flatnonzero(bad)
    r = int(rows[0])
    more = f" and {len(rows) - 1} more rows" if len(rows) > 1 else ""
    return TraceError(f"WDMoE trace file {where}: column {column!r} = {float(values[r]):.6g} at "
                      f"{_row_where(traces, r)}{more}; allowed: {allowed}")


def _check_arrays(traces: WDMoETraces, where) -> None:
    """Shapes, dtypes and offsets."""
    L, E = traces.n_layers, traces.n_experts
    if not (_is_int(L) and L >= 1 and _is_int(E) and E >= 2):
        raise TraceError(f"WDMoE trace file {where}: n_layers {L!r} and n_experts {E!r} must be integers >= 1 and >= 2")
    for key, value in (("n_layers", L), ("n_experts", E)):
        if traces.meta.get(key) != value:
            raise _meta_error(where, key, traces.meta.get(key), f"{value} (what the arrays hold)")
    s, g, rn = traces.scores, traces.gram, traces.residual_norm2
    if s.ndim != 2 or s.shape[1] != E or s.shape[0] < 1:
        raise TraceError(f"WDMoE trace file {where}: scores must be (rows, {E}), got {s.shape}")
    R = s.shape[0]
    if R % L:
        raise TraceError(f"WDMoE trace file {where}: {R} rows are not a whole number of steps of {L} layers")
    for name, arr, shape in (("gram", g, (R, E, E)), ("residual_norm2", rn, (R,)),
                             ("token_id", traces.token_ids, (R // L,))):
        if tuple(arr.shape) != shape:
            raise TraceError(f"WDMoE trace file {where}: {name} has shape {tuple(arr.shape)}, expected {shape}")
    if traces.token_ids.dtype.kind not in "iu":
        raise TraceError(f"WDMoE trace file {where}: column 'token_id' has type {traces.token_ids.dtype}; "
                         "allowed: integers")
    off = np.asarray(traces.prompt_offsets)
    n_prompts = len(traces.meta["prompt_ids"])
    ok = (off.ndim == 1 and len(off) == n_prompts + 1 and off.dtype.kind in "iu" and off[0] == 0 and off[-1] == R
          and bool((np.diff(off) > 0).all()) and bool((off % L == 0).all()))
    if not ok:
        raise TraceError(f"WDMoE trace file {where}: prompt offsets {off[:5].tolist()}... (length {len(off)}) are not "
                         f"{n_prompts + 1} increasing multiples of {L} from 0 to {R} (one prompt per entry of "
                         "metadata 'prompt_ids', each with >= 1 step)")
    max_tokens = traces.meta.get("max_tokens")
    if _is_int(max_tokens):
        steps = np.diff(off) // L
        if steps.max() > max_tokens:
            i = int(np.argmax(steps > max_tokens))
            raise TraceError(f"WDMoE trace file {where}: prompt {i} has {int(steps[i])} steps, more than metadata "
                             f"key 'max_tokens' = {max_tokens}")


def _check_values(traces: WDMoETraces, where) -> None:
    E = traces.n_experts
    s = traces.scores.astype(np.float32, copy=False)
    bad = ~((s >= 0) & (s <= 1))
    if bad.any():
        r, e = np.argwhere(bad)[0]
        raise _value_error(where, traces, _score_col(int(e)), bad.any(1), s[:, e], "finite, in [0, 1]")
    total = s.sum(1)
    bad = np.abs(total - 1) > _SCORE_SUM_TOL
    if bad.any():
        raise _value_error(where, traces, "score_*", bad, total, f"scores summing to 1 over the {E} experts "
                           f"(within {_SCORE_SUM_TOL}; the value shown is the sum)")
    rn = traces.residual_norm2.astype(np.float32, copy=False)
    bad = ~(np.isfinite(rn) & (rn >= 0))
    if bad.any():
        raise _value_error(where, traces, "residual_norm2", bad, rn, "finite, >= 0")
    g = traces.gram.astype(np.float32, copy=False)
    diag = np.diagonal(g, axis1=1, axis2=2)
    finite = np.isfinite(g).all((1, 2))
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        i, j = np.argwhere(~np.isfinite(g[r]))[0]
        raise _value_error(where, traces, _gram_col(int(i), int(j)), ~finite, g[:, i, j], "finite numbers")
    bad = diag < 0
    if bad.any():
        r, e = np.argwhere(bad)[0]
        raise _value_error(where, traces, _gram_col(int(e), int(e)), bad.any(1), diag[:, e],
                           "a squared norm y_e . y_e >= 0")
    scale = np.maximum(diag.max(1), 1e-30)
    asym = np.abs(g - g.transpose(0, 2, 1)).max((1, 2)) > _GRAM_TOL * scale
    if asym.any():
        raise TraceError(f"WDMoE trace file {where}: gram is not symmetric at {_row_where(traces, int(np.flatnonzero(asym)[0]))}; "
                         "allowed: G[i, j] == G[j, i]")
    bound = np.sqrt(np.maximum(diag[:, :, None] * diag[:, None, :], 0)) + _GRAM_TOL * scale[:, None, None]
    bad = np.abs(g) > bound
    if bad.any():
        r, i, j = np.argwhere(bad)[0]
        raise _value_error(where, traces, _gram_col(int(i), int(j)), bad.any((1, 2)), g[:, i, j],
                           "|y_i . y_j| <= ||y_i|| ||y_j|| (a Gram matrix)")
    vocab = traces.meta.get("vocab_size")
    tok = traces.token_ids
    if vocab is not None:
        bad = (tok < 0) | (tok >= vocab)
    else:
        bad = tok < 0
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise TraceError(f"WDMoE trace file {where}: column 'token_id' = {int(tok[t])} at step {t}; allowed: token ids "
                         f"in 0..{(vocab or 0) - 1 if vocab else 'V-1'}")


def validate_wdmoe_traces(traces: WDMoETraces, where: str | os.PathLike = "<traces>") -> None:
    """Check metadata, shapes, offsets and values; raises a one-line :class:`TraceError`.

    Scores finite in [0, 1] summing to 1 (within 1e-2); Gram matrices finite, symmetric, with
    non-negative diagonals and ``|G_ij| <= sqrt(G_ii G_jj)``; residual norms finite and >= 0;
    token ids in ``0..vocab_size-1``; prompt offsets increasing multiples of ``n_layers`` from 0
    to the row count, one prompt per ``meta['prompt_ids']`` entry, none longer than ``max_tokens``.
    """
    validate_wdmoe_meta(traces.meta, where)
    _check_arrays(traces, where)
    _check_values(traces, where)


# ----------------------------------------------------------------------------- files
def write_wdmoe_traces(traces: WDMoETraces, path: str | os.PathLike) -> Path:
    """Validate ``traces`` and write them to ``path`` (Parquet, zstd; atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hlm_gym.paths import atomic_path

    path = Path(path)
    validate_wdmoe_traces(traces, path)
    L, E = traces.n_layers, traces.n_experts
    R = traces.n_rows
    off = np.asarray(traces.prompt_offsets, dtype=np.int64)
    rows_per_prompt = np.diff(off)
    prompt = np.repeat(np.arange(len(rows_per_prompt), dtype=np.int32), rows_per_prompt)
    local = np.arange(R, dtype=np.int64) - np.repeat(off[:-1], rows_per_prompt)
    g = traces.gram.astype(np.float32)
    diag = np.diagonal(g, axis1=1, axis2=2)
    scale = diag.max(1)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    cols = {"prompt": prompt, "position": (local // L).astype(np.int16), "layer": (local % L).astype(np.int16),
            "token_id": np.repeat(traces.token_ids.astype(np.int32), L)}
    for e in range(E):
        cols[_score_col(e)] = traces.scores[:, e].astype(np.float16)
    for i, j in zip(*_upper(E)):
        cols[_gram_col(i, j)] = (g[:, i, j] / scale).astype(np.float16)
    cols["gram_scale"] = scale
    cols["residual_norm2"] = traces.residual_norm2.astype(np.float32)
    meta = {**traces.meta, "schema_version": SCHEMA_VERSION, "n_layers": L, "n_experts": E}
    table = pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta).encode("utf-8")})
    # float bytes split into streams, no dictionary: 20 % smaller than pyarrow's default encoding here
    floats = {c: "BYTE_STREAM_SPLIT" for c in cols if c.startswith(("score_", "gram_")) or c == "residual_norm2"}
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd", compression_level=9, use_dictionary=False,
                           column_encoding=floats)
    except OSError as exc:
        raise TraceError(f"cannot write WDMoE trace file {path} ({exc.strerror or exc})") from None
    return path


def read_wdmoe_meta(path: str | os.PathLike) -> dict:
    """The validated metadata of a WDMoE trace file, without reading its columns."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise TraceError(f"WDMoE trace file not found: {p}")
    try:
        schema = pq.read_schema(p)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for non-Parquet input
        raise TraceError(f"cannot read WDMoE trace file {p}: not a valid Parquet file ({type(exc).__name__})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise TraceError(f"{p} has no hlm_gym_wdmoe metadata: not a WDMoE trace file")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"WDMoE trace file {p} has corrupt metadata: {exc}") from None
    validate_wdmoe_meta(meta, p)
    missing = [c for c in _columns(meta["n_experts"]) if c not in schema.names]
    if missing:
        raise TraceError(f"WDMoE trace file {p} lacks columns {missing[:4]}{'...' if len(missing) > 4 else ''}")
    return meta


def load_wdmoe_traces(path_or_split: str | os.PathLike) -> WDMoETraces:
    """Read and validate a WDMoE trace file; a split name (``train``/``validation``/``test``) means the shipped one."""
    import pyarrow.parquet as pq

    p = default_wdmoe_path(str(path_or_split)) if str(path_or_split) in SPLITS else Path(path_or_split)
    meta = read_wdmoe_meta(p)
    L, E = int(meta["n_layers"]), int(meta["n_experts"])
    names = _columns(E)
    try:
        table = pq.read_table(p, columns=names)
    except Exception as exc:
        raise TraceError(f"cannot read WDMoE trace file {p}: corrupt data ({type(exc).__name__})") from None
    cols = {}
    for name in names:
        col = table.column(name)
        if col.null_count:
            raise TraceError(f"WDMoE trace file {p}: column {name!r} has {col.null_count} missing values")
        cols[name] = col.to_numpy()
    R = len(cols["prompt"])
    _check_layout(cols, L, len(meta["prompt_ids"]), p)
    prompt = cols["prompt"].astype(np.int64)
    offsets = np.searchsorted(prompt, np.arange(len(meta["prompt_ids"]) + 1)).astype(np.int64)
    scores = np.stack([cols[_score_col(e)] for e in range(E)], axis=1).astype(np.float32)
    scale = cols["gram_scale"].astype(np.float32)
    gram = np.empty((R, E, E), dtype=np.float32)
    for i, j in zip(*_upper(E)):
        v = cols[_gram_col(i, j)].astype(np.float32) * scale
        gram[:, i, j] = v
        gram[:, j, i] = v
    tok = cols["token_id"].reshape(-1, L)
    if R and not (tok == tok[:, :1]).all():
        r = int(np.flatnonzero((tok != tok[:, :1]).any(1))[0]) * L
        raise TraceError(f"WDMoE trace file {p}: column 'token_id' differs between the layers of one step at row {r}; "
                         "allowed: one token id per (prompt, position)")
    traces = WDMoETraces(scores, gram, cols["residual_norm2"].astype(np.float32), tok[:, 0].astype(np.int64),
                         offsets, L, E, meta)
    validate_wdmoe_traces(traces, p)
    # float16 scores sum to 1 within ~1e-3: renormalise so every row is an exact distribution
    traces.scores[:] = scores / scores.sum(1, keepdims=True)
    return traces


def _check_layout(cols: dict, n_layers: int, n_prompts: int, where) -> None:
    """Rows ordered (prompt, position, layer) with layer fastest, prompts 0..P-1, positions from 0."""
    R = len(cols["prompt"])
    if R == 0 or R % n_layers:
        raise TraceError(f"WDMoE trace file {where}: {R} rows are not a positive whole number of steps of "
                         f"{n_layers} layers")
    layer = cols["layer"].astype(np.int64)
    bad = layer != np.arange(R) % n_layers
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise TraceError(f"WDMoE trace file {where}: column 'layer' = {int(layer[r])} at row {r}; allowed: "
                         f"layers 0..{n_layers - 1} in order within each step (expected {r % n_layers})")
    prompt = cols["prompt"].astype(np.int64)[::n_layers]
    pos = cols["position"].astype(np.int64)[::n_layers]
    step = np.diff(prompt)
    if prompt[0] != 0 or ((step != 0) & (step != 1)).any() or prompt[-1] != n_prompts - 1 \
            or not (cols["prompt"].reshape(-1, n_layers) == cols["prompt"][::n_layers, None]).all():
        raise TraceError(f"WDMoE trace file {where}: column 'prompt' is not grouped in order 0..{n_prompts - 1} "
                         f"(one per entry of metadata 'prompt_ids'); allowed: rows ordered by prompt")
    starts = np.concatenate([[0], np.flatnonzero(step) + 1])
    expected = np.arange(len(pos)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(pos)]])))
    bad = (pos != expected) | (cols["position"].reshape(-1, n_layers) != cols["position"][::n_layers, None]).any(1)
    if bad.any():
        t = int(np.flatnonzero(bad)[0])
        raise TraceError(f"WDMoE trace file {where}: column 'position' = {int(pos[t])} at row {t * n_layers}; "
                         f"allowed: steps 0..n-1 in order within each prompt (expected {int(expected[t])})")
