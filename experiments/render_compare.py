"""Re-render a ``hlm-gym compare`` result (tables, dominance, Pareto plots) from its ``compare.json``.

    python experiments/render_compare.py RUN/compare.json --out docs/compare_full

Nothing is trained or evaluated: the rows of the JSON are re-checked with the current dominance
code and written as ``hlm-gym compare`` writes them (results.md/csv, dominance.csv,
pareto-<scenario>.png, compare.json), e.g. to publish a run made on another machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from hlm_gym.harness.compare import CompareConfig, dominance, write_outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a compare.json written by hlm-gym compare")
    ap.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = ap.parse_args()
    try:
        doc = json.loads(args.json.read_text())
        saved = dict(doc["config"])
        rc = saved.pop("resolved")
        rows, runs, wall = doc["rows"], doc["runs"], float(doc["wall_s"])
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"{args.json}: not a compare.json written by hlm-gym compare ({exc})") from None
    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    tuples = ("scenarios", "lambdas", "risk_targets", "thresholds", "ltt_deltas")
    config = CompareConfig(**{k: (tuple(v) if k in tuples and v is not None else v)
                              for k, v in saved.items() if k in fields})
    dom = [d for metric in ("risk", "error_rate") for sc in rc["scenarios"] for d in dominance(rows, sc, metric)]
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_outputs(args.out, rows, dom, runs, rc, config, wall)
    for key, path in files.items():
        if key != "tensorboard":
            print(f"{key:<14} {path}")


if __name__ == "__main__":
    main()
