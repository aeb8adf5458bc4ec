"""Re-render a ``hlm-gym compare`` result (tables, dominance, Pareto plots) from its ``compare.json``.

    python experiments/render_compare.py RUN/compare.json --out docs/compare_full

Nothing is trained or evaluated: the rows of the JSON are re-checked with the current dominance
code and written as ``hlm-gym compare`` writes them (results.md/csv, dominance.csv,
pareto-<scenario>.png, compare.json), e.g. to publish a run made on another machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hlm_gym.harness.compare import config_from_saved, dominance_checks, write_outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path, help="a compare.json written by hlm-gym compare")
    ap.add_argument("--out", type=Path, required=True, help="folder to write into")
    args = ap.parse_args()
    try:
        doc = json.loads(args.json.read_text())
        config, rc = config_from_saved(dict(doc["config"]))
        rows, runs, wall = doc["rows"], doc["runs"], float(doc["wall_s"])
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"{args.json}: not a compare.json written by hlm-gym compare ({exc})") from None
    main, second = dominance_checks(rows, rc["scenarios"], config.env_id)
    dom = main + second
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_outputs(args.out, rows, dom, runs, rc, config, wall)
    for key, path in files.items():
        if key != "tensorboard":
            print(f"{key:<14} {path}")


if __name__ == "__main__":
    main()
