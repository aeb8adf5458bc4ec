"""``hlm-gym compare`` on the local backend and on Ray, one after the other on this machine.

    python experiments/bench_backend.py [--out runs/bench-backend] [--json FILE] [--address ADDRESS]
                                        [-- EXTRA COMPARE FLAGS]

Runs the default comparison (or the one the extra flags after ``--`` describe) twice as
``hlm-gym compare`` processes: on the local backend (its default ``--jobs``: one training
process per core, at most 4; 2 on a 2-core machine) and with ``--backend ray`` (a local Ray
instance on all cores started by the command, or the cluster at ``--address``); each into its
own fresh folder under ``--out``. Prints the wall time of each (the whole command: start-up, training, evaluation,
outputs; Ray's start included), whether ``results.csv`` and ``dominance.csv`` are byte-identical,
and a last line ``ray / local wall time: X.XXx`` (below 1: Ray is faster).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run(argv: list[str], log: Path) -> float:
    """Run ``argv`` with its output to ``log``; its wall time in seconds (exits on failure)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"bench_backend: {' '.join(argv)} failed with status {rc}; see {log}")
    return wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench-backend", help="folder for both comparisons (must not exist)")
    p.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra hlm-gym compare flags")
    args = p.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    if out.exists():
        sys.exit(f"bench_backend: --out {out} exists; choose a new folder")
    out.mkdir(parents=True)
    exe = shutil.which("hlm-gym", path=str(Path(sys.executable).parent)) or "hlm-gym"
    local = [exe, "compare", *extra, "--out", str(out / "local")]
    ray = [exe, "compare", *extra, "--backend", "ray", "--out", str(out / "ray")]
    if args.address:
        ray += ["--address", args.address]
    print(f"local: {' '.join(local[1:])}", flush=True)
    wall_local = _run(local, out / "local.log")
    print(f"  {wall_local:.1f} s", flush=True)
    print(f"ray:   {' '.join(ray[1:])}", flush=True)
    wall_ray = _run(ray, out / "ray.log")
    print(f"  {wall_ray:.1f} s", flush=True)
    same = {name: filecmp.cmp(out / "local" / name, out / "ray" / name, shallow=False)
            for name in ("results.csv", "dominance.csv")}
    for name, equal in same.items():
        print(f"{name}: {'identical' if equal else 'DIFFERENT'}")
    result = {"cores": _cores(), "local_jobs": max(1, min(4, _cores())), "local_command": " ".join(["hlm-gym", *local[1:]]),
              "ray_command": " ".join(["hlm-gym", *ray[1:]]), "local_wall_s": round(wall_local, 1),
              "ray_wall_s": round(wall_ray, 1), "ratio_ray_over_local": round(wall_ray / wall_local, 3),
              "identical": same, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"ray / local wall time: {wall_ray / wall_local:.2f}x")


if __name__ == "__main__":
    main()
