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
"""

from __future__ import annotations

import json
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


class TraceError(HLMGymError, ValueError):
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
