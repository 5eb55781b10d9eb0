"""Export time, peak RAM and size for the demo model (SmolLM2-135M-Instruct): merged and GGUF.

Trains the demo plan for a few steps (or takes --run RUN_DIR), then runs each export in a fresh
``headtune export`` process, so each peak RAM figure is that process's own (sampled by the
export itself; Python, torch and the libraries included). Prints a markdown table.

    python benchmarks/export_cost.py [--run RUN_DIR] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing run folder (default: train the demo for --steps steps)")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="headtune-export-bench-"))
    run = Path(args.run) if args.run else work / "demo"
    if not args.run:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "headtune.core.cli",
                "train",
                "--demo",
                "--quiet",
                "--set",
                f"output.dir={run}",
                "--set",
                f"training.max_steps={args.steps}",
                "--set",
                "training.batch_size=2",
                "--set",
                "training.eval_every=0",
                "--set",
                "training.save_every=0",
            ],
            check=True,
        )
    rows = []
    for fmt, extra in (
        ("adapter", []),
        ("merged", ["--dtype", "bfloat16"]),
        ("merged", ["--dtype", "float32"]),
        ("gguf", ["--gguf-type", "f16"]),
        ("gguf", ["--gguf-type", "q8_0"]),
    ):
        out = work / f"{fmt}-{'-'.join(extra[1:]) or 'x'}"
        t0 = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "headtune.core.cli",
                "export",
                str(run),
                "--format",
                fmt,
                "--out",
                str(out),
                "--progress-json",
                *extra,
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            (
                fmt + (f" {extra[1]}" if extra else ""),
                result["seconds"],
                wall,
                result["peak_rss_bytes"] / 2**30,
                folder_bytes(out) / 2**20,
            )
        )
    print(f"Run: {run}\n")
    print("| export | export time (s) | process wall time (s) | peak RAM of the process (GiB) | size (MiB) |")
    print("|---|---|---|---|---|")
    for name, secs, wall, peak, size in rows:
        print(f"| {name} | {secs:.1f} | {wall:.1f} | {peak:.2f} | {size:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
