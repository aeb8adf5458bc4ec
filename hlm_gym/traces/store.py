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
``u`` ...           float16   the signals of :data:`hlm_gym.lm.uncertainty.SIGNAL_NAMES`
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
its position in the requested prompt list; :class:`hlm_gym.lm.decoding.HybridSession` with that
seed reproduces the row (the live environment relies on this).

The builder decodes ``batch_size`` prompts at once (left padding, attention mask and KV
caches in both models; always-send never has pending tokens, so both models see the same
token stream), with the per-prompt generators and draw order of ``HybridSession``. Chunks are
written as part files next to the output so that an interrupted build resumes.

Loading validates values as well as structure (:func:`validate_meta`, :func:`validate_columns`,
one vectorised pass of a few milliseconds): a file with NaN or out-of-range probabilities,
token ids outside the vocabulary, missing or misplaced ``end`` flags, or impossible metadata
is refused with a one-line :class:`TraceError` naming the file, the column or key, the first
bad row (prompt and position), the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from hlm_gym.errors import HLMGymError

SCHEMA_VERSION = 1
META_KEY = b"hlm_gym"
DEFAULT_K_CHOICES = (8, 64, 512)
SIGNALS = ("u", "entropy", "top1_prob", "margin", "saturation")
BASE_COLUMNS = ("prompt", "position", "draft", "token", "accepted", "end") + SIGNALS + (
    "q_draft", "p_draft", "beta", "uniform")
SPLITS = ("train", "validation", "test")
MODES = ("sample", "greedy")


class TraceError(HLMGymError, ValueError):
    """A trace file is missing, unreadable, incomplete, of an unsupported schema version or holds bad values."""


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
    """The JSON metadata of a trace file (validated by :func:`validate_meta`), without reading the columns."""
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
    if not isinstance(meta, dict):
        raise TraceError(f"trace file {p} has corrupt metadata: a JSON {type(meta).__name__}, not an object")
    validate_meta(meta, p)
    missing = [c for c in BASE_COLUMNS if c not in schema.names]
    for k in meta["k_choices"]:
        missing += [c for c in k_columns(k) if c not in schema.names]
    if missing:
        raise TraceError(f"trace file {p} lacks columns {missing}")
    return meta


def load_traces(path: str | os.PathLike) -> Traces:
    """Read and validate a trace file into numpy columns (no per-row Python objects).

    Raises :class:`TraceError` naming the file, the metadata key or column, the first bad row
    and what is allowed (see :func:`validate_meta` and :func:`validate_columns`).
    """
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
    offsets = validate_columns(cols, meta, path)
    # u is a count over K temperature samples, stored as float16: snap it back to its exact grid
    # so that thresholds at multiples of 1/K behave as in live decoding.
    k = int(meta.get("k") or 0)
    if k > 0:
        cols["u"] = (np.round(cols["u"].astype(np.float64) * k) / k).astype(np.float32)
    return Traces(str(path), meta, cols, offsets, k_choices)


def validate(traces: Traces) -> None:
    """Check a loaded :class:`Traces`: metadata, column values and episode boundaries.

    :func:`load_traces` runs the same checks on every file it reads; this is for traces
    assembled in memory. Raises :class:`TraceError`.
    """
    validate_meta(traces.meta, traces.path)
    offsets = validate_columns(traces.columns, traces.meta, traces.path)
    if not np.array_equal(offsets, traces.offsets):
        raise TraceError(f"traces {traces.path}: offsets do not match the 'prompt' column")


# ------------------------------------------------------------------------------ validation
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _meta_error(where, key: str, value, allowed: str) -> TraceError:
    return TraceError(f"trace file {where}: metadata key {key!r} = {value!r}; allowed: {allowed}")


def _check_meta_int(meta: dict, where, key: str, lo: int, hi: int | None = None) -> None:
    value = meta[key]
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        allowed = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        raise _meta_error(where, key, value, allowed)


def _check_schema_version(meta: dict, where) -> None:
    version = meta.get("schema_version")
    if not _is_int(version):
        raise TraceError(f"trace file {where} has no integer schema_version in its metadata "
                         f"(got {version!r}); allowed: an integer in 1..{SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise TraceError(f"trace file {where} has schema version {version}, newer than the supported "
                         f"version {SCHEMA_VERSION}; upgrade hlm-gym or rebuild the traces")
    if version < 1:
        raise _meta_error(where, "schema_version", version, f"an integer in 1..{SCHEMA_VERSION}")


def _check_k_choices(meta: dict, where) -> None:
    ks, vocab = meta["k_choices"], meta["vocab_size"]
    allowed = f"a list of distinct integers in 1..{vocab - 1} (V - 1)"
    if not isinstance(ks, list):
        raise _meta_error(where, "k_choices", ks, allowed)
    for k in ks:
        if not _is_int(k) or not 1 <= k < vocab:
            raise TraceError(f"trace file {where}: metadata key 'k_choices' holds {k!r}; allowed: {allowed}")
    if len(set(ks)) != len(ks):
        raise _meta_error(where, "k_choices", ks, allowed)


def _check_optional_meta(meta: dict, where) -> None:
    """Decoding settings the live environment reads: checked when present."""
    if meta.get("k") is not None:
        _check_meta_int(meta, where, "k", 1)
    for key in ("temperature", "theta_max"):
        if key in meta and not (_is_real(meta[key]) and meta[key] > 0):
            raise _meta_error(where, key, meta[key], "a finite number > 0")
    eos = meta.get("eos_token_id")
    if eos is not None and not (_is_int(eos) and 0 <= eos < meta["vocab_size"]):
        raise _meta_error(where, "eos_token_id", eos, f"null or an integer in 0..{meta['vocab_size'] - 1}")
    if "token_text" in meta and not isinstance(meta["token_text"], dict):
        raise _meta_error(where, "token_text", type(meta["token_text"]).__name__, "an object (id -> text)")


_PROMPT_FIELDS = (("id", str, "a string"), ("split", str, "a string"), ("seed", int, "an integer"),
                  ("n_tokens", int, "an integer >= 1"))


def _check_prompts_meta(meta: dict, where) -> None:
    prompts = meta["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise _meta_error(where, "prompts", prompts if not isinstance(prompts, list) else [],
                          "a non-empty list of {id, split, seed, n_tokens} objects")
    for i, entry in enumerate(prompts):
        if not isinstance(entry, dict):
            raise TraceError(f"trace file {where}: metadata 'prompts'[{i}] = {entry!r}; allowed: an object "
                             "with id, split, seed and n_tokens")
        for key, kind, allowed in _PROMPT_FIELDS:
            value = entry.get(key)
            ok = isinstance(value, kind) and not isinstance(value, bool)
            if key not in entry or not ok or (key == "n_tokens" and value < 1):
                raise TraceError(f"trace file {where}: metadata 'prompts'[{i}][{key!r}] = "
                                 f"{value if key in entry else '<missing>'!r}; allowed: {allowed}")


def validate_meta(meta: dict, where: str | os.PathLike = "<traces>") -> None:
    """Check a trace file's metadata; raises :class:`TraceError` naming the key, its value and what is allowed.

    Schema version an int in 1..SCHEMA_VERSION; ``vocab_size`` an int >= 2; ``max_new_tokens``
    an int >= 1; ``mode`` sample or greedy; ``k_choices`` distinct ints in 1..V-1; ``prompts`` a
    non-empty list of {id, split, seed, n_tokens}; ``k``, ``temperature``, ``theta_max``,
    ``eos_token_id`` and ``token_text`` sensible when present.
    """
    _check_schema_version(meta, where)
    for key in ("vocab_size", "k_choices", "prompts", "max_new_tokens", "mode"):
        if key not in meta:
            raise TraceError(f"trace file {where} metadata lacks {key!r}")
    _check_meta_int(meta, where, "vocab_size", 2)
    _check_meta_int(meta, where, "max_new_tokens", 1)
    if meta["mode"] not in MODES:
        raise _meta_error(where, "mode", meta["mode"], " or ".join(MODES))
    _check_k_choices(meta, where)
    _check_optional_meta(meta, where)
    _check_prompts_meta(meta, where)


def _row_error(where, cols: dict, name: str, bad: np.ndarray, allowed: str, locate: str = "position") -> TraceError:
    """The error for column ``name`` at the first row of the boolean mask ``bad``.

    ``locate`` names the row by ``"position"`` (prompt and position), ``"prompt"`` (prompt only,
    for a bad position column) or ``"row"`` (row index only, for a bad prompt column).
    """
    rows = np.flatnonzero(bad)
    r = int(rows[0])
    value = cols[name][r]
    text = f"{float(value):.6g}" if np.issubdtype(np.asarray(value).dtype, np.floating) else repr(value.item())
    where_row = {"position": f"prompt {int(cols['prompt'][r])}, position {int(cols['position'][r])} (row {r})",
                 "prompt": f"prompt {int(cols['prompt'][r])} (row {r})", "row": f"row {r}"}[locate]
    more = f" and {len(rows) - 1} more rows" if len(rows) > 1 else ""
    return TraceError(f"trace file {where}: column {name!r} = {text} at {where_row}{more}; allowed: {allowed}")


def _check_dtypes(cols: dict, k_choices, where) -> None:
    ints = ("prompt", "position", "draft", "token")
    bools = ("accepted", "end") + tuple(k_columns(k)[1] for k in k_choices)
    for name, col in cols.items():
        kind = "iu" if name in ints else "b" if name in bools else "f"
        if col.dtype.kind not in kind:
            allowed = {"iu": "integers", "b": "booleans", "f": "floating-point numbers"}[kind]
            raise TraceError(f"trace file {where}: column {name!r} has type {col.dtype}; allowed: {allowed}")


def _prompt_offsets(cols: dict, meta: dict, where) -> np.ndarray:
    """Row offsets of each prompt, checking that rows are grouped by prompt 0..N-1 in order."""
    prompt = cols["prompt"]
    n_prompts = len(meta["prompts"])
    if len(prompt) == 0:
        raise TraceError(f"trace file {where} has no token rows")
    allowed = f"rows grouped by prompt in order 0..{n_prompts - 1} (metadata lists {n_prompts} prompts), no gaps"
    step = np.diff(prompt.astype(np.int64))
    bad = np.zeros(len(prompt), dtype=bool)
    bad[0] = prompt[0] != 0
    bad[1:] = (step != 0) & (step != 1)
    if bad.any():
        raise _row_error(where, cols, "prompt", bad, allowed, locate="row")
    if prompt[-1] != n_prompts - 1:
        bad = np.zeros(len(prompt), dtype=bool)
        bad[-1] = True
        raise _row_error(where, cols, "prompt", bad, allowed + " (the last prompt is missing or extra)",
                         locate="row")
    return np.concatenate([[0], np.flatnonzero(step) + 1, [len(prompt)]]).astype(np.int64)


def _check_episodes(cols: dict, meta: dict, offsets: np.ndarray, where) -> None:
    """Positions 0..L-1 in each prompt, one ``end`` on its last row, lengths as in the metadata."""
    lengths = np.diff(offsets)
    starts = np.repeat(offsets[:-1], lengths)
    expected = np.arange(len(starts), dtype=np.int64) - starts
    bad = cols["position"] != expected
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise _row_error(where, cols, "position", bad,
                         f"0..L-1 in order within each prompt (expected {int(expected[r])} here)",
                         locate="prompt")
    last = np.zeros(len(starts), dtype=bool)
    last[offsets[1:] - 1] = True
    bad = cols["end"] != last
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        end_pos = int(offsets[int(cols["prompt"][r]) + 1] - starts[r] - 1)
        raise _row_error(where, cols, "end", bad, f"exactly one end per prompt, on its last row "
                         f"(here position {end_pos})")
    max_new = meta["max_new_tokens"]
    if lengths.max() > max_new:
        i = int(np.argmax(lengths > max_new))
        raise TraceError(f"trace file {where}: prompt {i} has {int(lengths[i])} token rows, more than metadata "
                         f"key 'max_new_tokens' = {max_new}; allowed: at most max_new_tokens rows per prompt")
    listed = np.asarray([p["n_tokens"] for p in meta["prompts"]], dtype=np.int64)
    if not np.array_equal(listed, lengths):
        i = int(np.argmax(listed != lengths))
        raise TraceError(f"trace file {where}: metadata 'prompts'[{i}]['n_tokens'] = {int(listed[i])} but "
                         f"prompt {i} has {int(lengths[i])} token rows; allowed: the prompt's row count")


def _value_rules(meta: dict, k_choices) -> list[tuple[str, float, float, bool, str]]:
    """(column, low, high, NaN allowed, allowed text) of every float column."""
    unit = "finite, in [0, 1]"
    ln_v = math.log(meta["vocab_size"])
    rules = [(name, 0.0, 1.0, False, unit) for name in ("u", "top1_prob", "margin", "q_draft", "p_draft", "beta")]
    rules += [(k_columns(k)[0], 0.0, 1.0, False, unit) for k in k_choices]
    # float16 storage may round ln V up by half a unit in the last place
    rules.append(("entropy", 0.0, ln_v * (1 + 1e-3), False, f"finite, in [0, ln V = {ln_v:.4g}] nats"))
    rules.append(("saturation", -1.0, 1.0, True, "in [-1, 1], or NaN (no hidden states)"))
    greedy = meta["mode"] == "greedy"
    rules.append(("uniform", 0.0, 1.0, greedy, "in [0, 1], or NaN in greedy mode" if greedy
                  else "finite, in [0, 1] (sample mode)"))
    return rules


def _check_values(cols: dict, meta: dict, k_choices, where) -> None:
    vocab = meta["vocab_size"]
    for name in ("draft", "token"):
        col = cols[name]
        bad = (col < 0) | (col >= vocab)
        if bad.any():
            raise _row_error(where, cols, name, bad, f"token ids in 0..{vocab - 1} (vocab_size {vocab})")
    for name, lo, hi, nan_ok, allowed in _value_rules(meta, k_choices):
        col = cols[name].astype(np.float32, copy=False)  # float16 comparisons are emulated: slower
        bad = ~((col >= lo) & (col <= hi))
        if nan_ok:
            bad &= ~np.isnan(col)
        if bad.any():
            raise _row_error(where, cols, name, bad, allowed)


def validate_columns(cols: dict[str, np.ndarray], meta: dict, where: str | os.PathLike = "<traces>") -> np.ndarray:
    """Check the columns of a trace against its (validated) metadata; returns the per-prompt row offsets.

    One vectorised pass: column types (ints, booleans, floats); rows grouped by prompt 0..N-1
    with positions 0..L-1; exactly one ``end`` per prompt on its last row; no response longer
    than ``max_new_tokens`` and row counts as listed in ``prompts``; token ids in 0..V-1;
    probabilities, ``u``, ``beta``/``beta_k*`` finite in [0, 1]; ``entropy`` in [0, ln V];
    ``saturation`` in [-1, 1] or NaN; ``uniform`` in [0, 1] (NaN allowed in greedy mode).
    Raises :class:`TraceError` naming the column, the first bad row (prompt, position), the
    value and what is allowed.
    """
    k_choices = tuple(meta["k_choices"])
    missing = [c for c in BASE_COLUMNS + tuple(c for k in k_choices for c in k_columns(k)) if c not in cols]
    if missing:
        raise TraceError(f"trace file {where} lacks columns {missing}")
    _check_dtypes(cols, k_choices, where)
    offsets = _prompt_offsets(cols, meta, where)
    _check_episodes(cols, meta, offsets, where)
    _check_values(cols, meta, k_choices, where)
    return offsets


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
