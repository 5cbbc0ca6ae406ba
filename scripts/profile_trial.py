"""Profile the trial loop on a study of N finished trials, inside one process.

    python scripts/profile_trial.py --trials 100000 --run 15 [--backend postgresql]
    PYTHONPATH=/path/to/other/src python scripts/profile_trial.py ...   # another studyctl

The study is built as `bench_scale.py` builds it (bulk insert, in a spawned child); then,
in this process, the worker's own set-up (storage, heartbeat, stored spec, objective,
study) and Optuna's first read of every trial run unprofiled, two trials warm up, and
`--run` trials of a near-zero objective run under cProfile, with the progress line the
trial process prints. Prints seconds per trial and the per-trial functions' cumulative
milliseconds per trial (JSON), then cProfile's top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale

# Functions of the per-trial path, by (file suffix, name).
WATCHED = {
    "queued-trial pop (Optuna's filter)": ("study/study.py", "_pop_waiting_trial_id"),
    "queued-trial pop (studyctl's query)": ("storage/waiting.py", "pop_waiting_trial_id"),
    "budget claim": ("storage/tables.py", "try_claim"),
    "heartbeat sweep (Optuna)": ("_rdb/storage.py", "_get_stale_trial_ids"),
    "lost-trial sweep (studyctl)": ("execution/trial_loop.py", "sweep_lost_trials"),
    "trial creation (Optuna)": ("_rdb/storage.py", "_create_new_trial"),
    "cache refresh (Optuna)": ("_cached_storage.py", "_read_trials_from_remote_storage"),
    "trial end (set_trial_state_values)": ("storage/rdb.py", "_set_trial_state_values"),
    "progress line": ("execution/progress.py", "__call__"),
    "one trial (study.optimize)": ("execution/trial_loop.py", "_optimize_one"),
}


def _watched(stats: pstats.Stats, runs: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for (path, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        for label, (suffix, fname) in WATCHED.items():
            if name == fname and path.endswith(suffix):
                out[label] = round(1000 * row[3] / runs, 2)
    return out


def _set_budget(url: str, finished: int, extra: int) -> None:
    """Budget = the built study's finished trials + `extra` (about 90 % of `finished`; the
    exact count is read here)."""
    import sqlalchemy as sa

    from studyctl.storage import tables

    engine = sa.create_engine(url)
    with tables.transaction(engine) as conn:
        record = tables.get_study_record(conn, bench_scale.STUDY)
        assert record is not None
        done = conn.execute(
            sa.text(
                "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :n AND t.state IN ('COMPLETE', 'PRUNED')"
            ),
            {"n": bench_scale.STUDY},
        ).scalar_one()
        spec = json.loads(record["spec_json"])
        spec["n_trials"] = done + extra
        tables.upsert_study_record(
            conn, bench_scale.STUDY, done + extra, json.dumps(spec, sort_keys=True)
        )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100000)
    parser.add_argument("--run", type=int, default=15)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql"))
    args = parser.parse_args()

    from studyctl.execution.progress import ProgressPrinter
    from studyctl.execution.registration import WorkerRegistration
    from studyctl.execution.trial_loop import run_trial_loop
    from studyctl.objectives import resolve_objective
    from studyctl.storage import close_storage
    from studyctl.storage.connect import enable_heartbeat, open_worker_storage
    from studyctl.storage.studies import load_stored_spec, open_study

    with tempfile.TemporaryDirectory(prefix="studyctl-profile-") as tmp:
        work = Path(tmp)
        (work / "objectives").mkdir()
        (work / "objectives" / "noop.py").write_text(bench_scale.NOOP)
        database = bench_scale.Database(args.backend, work, "profile")
        url = database.url
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=bench_scale.build_studies, args=(url, args.trials, str(work / "scale.toml"))
        )
        child.start()
        child.join()
        assert child.exitcode == 0, child.exitcode
        print(
            f"built {args.trials} trials in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        _set_budget(url, args.trials, args.run + 2)

        storage = open_worker_storage(url)
        spec = load_stored_spec(storage, bench_scale.STUDY)
        w = spec.worker
        enable_heartbeat(
            storage,
            interval=w.heartbeat_interval,
            grace_period=w.grace_period,
            max_retries=w.max_retries,
        )
        objective = resolve_objective(spec.objective, work / "objectives")
        study = open_study(storage, spec, create=False).study
        study.get_trials(deepcopy=False)  # Optuna's first read of every trial: not per trial
        registration = WorkerRegistration(storage, spec.name, interval=0)
        printer = ProgressPrinter(storage, study, spec.n_trials, lambda line: None)
        printer.totals.read()  # its first read counts the whole study once: not per trial
        run_trial_loop(storage, study, spec, objective, registration, max_trials=2)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        result = run_trial_loop(
            storage, study, spec, objective, registration, max_trials=args.run, on_trial=printer
        )
        profiler.disable()
        elapsed = time.perf_counter() - start
        assert result.trials_run == args.run, result
        stats = pstats.Stats(profiler)
        print(
            json.dumps(
                {
                    "trials": args.trials,
                    "run": args.run,
                    "per_trial_s": round(elapsed / args.run, 4),
                    "ms_per_trial": _watched(stats, args.run),
                },
                indent=1,
            )
        )
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(args.top)
        print(text.getvalue(), file=sys.stderr)
        close_storage(url)
        database.drop()


if __name__ == "__main__":
    main()
