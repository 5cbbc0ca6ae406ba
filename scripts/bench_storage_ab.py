"""Figure 6's one-worker row, against an earlier studyctl, in alternating rounds.

    python scripts/bench_storage_ab.py --baseline 665c700                  # PostgreSQL
    python scripts/bench_storage_ab.py --baseline 665c700 --backend sqlite

Each round runs, each on a new database: `studyctl run SPEC --workers 1` of a near-zero
objective (random sampler, `--trials` trials) with this working tree's studyctl and with
the baseline's (`git archive` of REF, through `PYTHONPATH`), in an order that alternates
between rounds, then plain Optuna's `study.optimize` with the same objective and sampler.
Rates are trials per second from the first trial's start to the last one's end, as in
figure 6. The machine is shared and noisy: compare within a round; the medians are given
with every round's figures. Prints one JSON object; writes no file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
from bench_scale import checkout_baseline, snapshot_worktree

NOOP = """
from studyctl import function_objective


@function_objective("noop")
def noop(trial, ctx):
    return trial.suggest_float("x", 0.0, 1.0)
"""

SPEC = """
name = "ab"
objective = "noop"
n_trials = {trials}
[sampler]
type = "random"
[worker]
trials_per_process = 100000
"""


class Databases:
    def __init__(self, backend: str, work: Path) -> None:
        self.backend, self.work, self.n = backend, work, 0

    def new(self) -> tuple[str, Callable[[], None]]:
        self.n += 1
        if self.backend == "sqlite":
            return f"sqlite:///{self.work}/ab{self.n}.db", lambda: None
        import psycopg

        name = f"studyctl_ab_{os.getpid()}_{self.n}"
        admin = psycopg.connect(bench.PG_ADMIN, autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            admin.close()

        return f"postgresql+psycopg://root@127.0.0.1:5432/{name}", drop


def studyctl_rate(src: Path, url: str, work: Path, trials: int) -> float:
    spec = work / "ab.toml"
    spec.write_text(SPEC.format(trials=trials))
    objectives = ["--objectives-dir", str(work / "objectives")]
    run = subprocess.run(
        [*bench.STUDYCTL, "run", str(spec), "-q", "-s", url, "--workers", "1", *objectives],
        env=bench.env(PYTHONPATH=str(src)),
        cwd=work,
        capture_output=True,
        text=True,
    )
    rate, errors = bench._rate(url, "ab", trials, [run.returncode])
    if errors:
        raise SystemExit(f"studyctl of {src}: {errors} errors\n{run.stderr[-2000:]}")
    return rate


def plain_rate(url: str, work: Path, trials: int) -> float:
    import optuna

    optuna.create_study(study_name="plain", storage=url)
    run = subprocess.run(
        [sys.executable, "-c", bench.PLAIN_LOAD, "plain", url, str(trials)],
        env=bench.env(),
        cwd=work,
        capture_output=True,
    )
    rate, errors = bench._rate(url, "plain", trials, [run.returncode])
    if errors:
        raise SystemExit(f"plain Optuna: {errors} errors")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git ref of the earlier studyctl")
    parser.add_argument("--backend", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--trials", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="studyctl-ab-") as tmp:
        work = Path(tmp)
        (work / "objectives").mkdir()
        (work / "objectives" / "noop.py").write_text(NOOP)
        trees = {"now": snapshot_worktree(work), "baseline": checkout_baseline(args.baseline, work)}
        databases = Databases(args.backend, work)
        rates: dict[str, list[float]] = {"now": [], "baseline": [], "plain": []}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                url, drop = databases.new()
                try:
                    rates[name].append(studyctl_rate(trees[name], url, work, args.trials))
                finally:
                    drop()
            url, drop = databases.new()
            try:
                rates["plain"].append(plain_rate(url, work, args.trials))
            finally:
                drop()
            print({k: v[-1] for k, v in rates.items()}, file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(
        json.dumps(
            {
                "backend": args.backend,
                "baseline": args.baseline,
                "trials": args.trials,
                "rates_per_round": rates,
                "median": median,
                "now_over_plain": round(median["now"] / median["plain"], 2),
                "baseline_over_plain": round(median["baseline"] / median["plain"], 2),
                "now_over_baseline": round(median["now"] / median["baseline"], 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
