"""Trace columns for fitting and calibrating policies (a thin layer over :mod:`hlm_gym.traces.store`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hlm_gym.policies.base import PolicyError

__all__ = ["trace_columns", "resolve_trace_path", "split_trace_file"]

_COLUMNS = ("u", "entropy", "top1_prob", "margin", "saturation", "beta", "p_draft", "q_draft", "accepted",
            "position", "prompt")


def resolve_trace_path(traces: Any, split: str) -> Path:
    """The trace file of ``split``: the shipped default (``traces=None``), a file, or a folder
    holding ``embedded-<split>.parquet`` or ``<anything>-<split>.parquet``/``<split>.parquet``."""
    from hlm_gym.traces.store import default_trace_path

    if traces is None:
        return default_trace_path(split)
    p = Path(os.fspath(traces))
    if p.is_dir():
        for cand in [p / f"embedded-{split}.parquet", p / f"{split}.parquet", *sorted(p.glob(f"*-{split}.parquet"))]:
            if cand.is_file():
                return cand
        raise PolicyError(f"no trace file for split {split!r} in {p} (expected embedded-{split}.parquet)")
    return p


def trace_columns(traces: Any = None, split: str = "train") -> dict[str, np.ndarray]:
    """float64/bool numpy columns of a trace set's ``split``.

    ``traces``: ``None`` (shipped default traces), a path (file or folder), a loaded
    :class:`hlm_gym.traces.store.Traces`, or a mapping of columns (used as is; ``prompt`` is the
    response id, ``episode`` accepted as an alias). The returned ``prompt`` column identifies
    responses (the i.i.d. units of Learn-then-Test).
    """
    if isinstance(traces, Mapping):
        cols = {k: np.asarray(v) for k, v in traces.items()}
        if "prompt" not in cols and "episode" in cols:
            cols["prompt"] = cols["episode"]
        missing = [c for c in ("u", "beta") if c not in cols]
        if missing:
            raise PolicyError(f"trace columns lack {missing}")
        return cols
    from hlm_gym.traces.store import Traces, load_traces

    tr = traces if isinstance(traces, Traces) else load_traces(resolve_trace_path(traces, split))
    if isinstance(traces, Traces) or traces is not None:
        splits = np.asarray([p.get("split", split) for p in tr.meta["prompts"]])
        if np.any(splits != split) and np.any(splits == split):
            tr = tr.subset(np.flatnonzero(splits == split).tolist())
    out = {}
    for name in _COLUMNS:
        if name in tr.columns:
            col = tr.columns[name]
            out[name] = col if col.dtype == bool else col.astype(np.float64) if name not in ("prompt", "position") \
                else col.astype(np.int64)
    out["vocab_size"] = np.asarray(tr.vocab_size)
    return out


def split_trace_file(src: str | os.PathLike, out_dir: str | os.PathLike,
                     fractions: tuple[float, float, float] = (0.6, 0.15, 0.25), seed: int = 0) -> Path:
    """Split one trace file's prompts into ``embedded-{train,validation,test}.parquet`` in ``out_dir``.

    For when only a single trace file exists (e.g. a training-split build): prompts are
    shuffled with ``seed`` and cut by ``fractions``; rows, ``prompt`` indices and the metadata's
    prompt list (with the new split labels) are rewritten, everything else is kept. Returns
    ``out_dir``. The three parts are disjoint sets of responses, so evaluation stays held out.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hlm_gym.paths import atomic_write_bytes
    from hlm_gym.traces.store import META_KEY, read_meta

    meta = read_meta(src)
    table = pq.read_table(src)
    n = len(meta["prompts"])
    if n < 3:
        raise PolicyError(f"cannot split {src}: it has {n} prompts (need >= 3)")
    order = np.random.default_rng(seed).permutation(n)
    c1 = max(1, int(round(fractions[0] * n)))
    c2 = max(c1 + 1, int(round((fractions[0] + fractions[1]) * n)))
    groups = {"train": np.sort(order[:c1]), "validation": np.sort(order[c1:c2]), "test": np.sort(order[c2:])}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompt_col = table.column("prompt").to_numpy()
    for split, idx in groups.items():
        mask = np.isin(prompt_col, idx)
        sub = table.filter(pa.array(mask))
        remap = np.full(n, -1, dtype=np.int32)
        remap[idx] = np.arange(idx.size, dtype=np.int32)
        sub = sub.set_column(sub.schema.get_field_index("prompt"), "prompt",
                             pa.array(remap[sub.column("prompt").to_numpy()]))
        m = dict(meta)
        m["prompts"] = [dict(meta["prompts"][i], split=split) for i in idx]
        m["split_from"] = {"file": str(src), "seed": seed, "fractions": list(fractions)}
        md = dict(sub.schema.metadata or {})
        md[META_KEY] = json.dumps(m).encode("utf-8")
        sub = sub.replace_schema_metadata(md)
        sink = pa.BufferOutputStream()
        pq.write_table(sub, sink, compression="zstd")
        atomic_write_bytes(out / f"embedded-{split}.parquet", sink.getvalue().to_pybytes())
    return out
