"""What packing sweep jobs into SLURM array tasks saves, measured side by side on a running cluster.

    python -m ablation.bench_slurm model=minilm_l6 ablate.first=0..L-1 ablate.last=0..L-1 --packs 1,3,21

Runs the sweep once with the basic launcher, so that every training and cell is in the store; then, in
alternating rounds, the same sweep through `hydra/launcher=slurm` with each `jobs_per_task`: each job then
costs only what a task pays to exist (scheduling, imports, the model load) plus a cached read, which is what
packing saves. Prints the wall time of each and its ratio to one job per task. Needs SLURM's clients
(`SLURM_CONF`, see tests/slurm_cluster.py) and the `cluster` extra.
"""

from __future__ import annotations

import argparse

import numpy as np

from ablation.bench import multirun_seconds


def main(argv: list[str] | None = None) -> None:
    """Measure and print the wall time of the sweep per jobs_per_task."""
    parser = argparse.ArgumentParser(
        prog="python -m ablation.bench_slurm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--packs", default="1,4,16", help="jobs_per_task values, comma-separated (default 1,4,16)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per value (default 2)")
    args, overrides = parser.parse_known_args(argv)
    packs = [int(n) for n in args.packs.split(",")]
    warm, table = multirun_seconds(overrides)  # trains and computes every cell once
    print(f"{len(table)} jobs; first run (basic launcher, training and cells) {warm:.1f} s", flush=True)
    seconds: dict[int, list[float]] = {n: [] for n in packs}
    for _ in range(args.rounds):
        for n in packs:
            wall, rows = multirun_seconds(
                [*overrides, "hydra/launcher=slurm", f"hydra.launcher.jobs_per_task={n}"]
            )
            assert not rows["trained_now"].any() and not rows["cell_computed"].any(), "the store was not warm"
            seconds[n].append(wall)
    base = float(np.mean(seconds[packs[0]]))
    print(
        f"{'jobs_per_task':>13} {'tasks':>6} {'wall s (rounds)':>24} {'s/job':>7} {'vs ' + str(packs[0]):>7}"
    )
    for n in packs:
        mean = float(np.mean(seconds[n]))
        rounds = ", ".join(f"{s:.1f}" for s in seconds[n])
        tasks = -(-len(table) // n)
        print(
            f"{n:>13} {tasks:>6} {mean:>8.1f} ({rounds:>13}) {mean / len(table):>7.2f} {mean / base:>7.2f}x"
        )


if __name__ == "__main__":
    main()
