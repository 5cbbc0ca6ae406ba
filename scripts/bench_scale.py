"""studyctl at scale: studies of 1k, 10k and 100k finished trials, side by side with plain
Optuna on the same storage in the same run.

    python scripts/bench_scale.py                      # full: 1k/10k/100k, SQLite and
                                                       # PostgreSQL; writes
                                                       # benchmarks/scale.json, scale.png and
                                                       # the "Scale" section of BENCHMARKS.md
    python scripts/bench_scale.py --baseline main      # also measures the studyctl of git
                                                       # ref `main` on the same databases
    python scripts/bench_scale.py --quick              # < 60 s smoke run (CI); no files

How a study of N trials is built (seconds, not hours): the study is created through
studyctl's API (its spec record included), then N finished trials are written straight into
Optuna's tables in ONE transaction with SQLAlchemy Core bulk inserts (`trials`,
`trial_values`, `trial_params`, `trial_user_attributes`, `trial_system_attributes`,
`trial_intermediate_values`), the rows Optuna itself writes for a trial: 90 % COMPLETE,
6 % PRUNED (with two intermediate values), 4 % FAIL (each followed by a retry that carries
`failed_trial`/`retry_history`, as studyctl's retries do). Trial ids are given explicitly;
on PostgreSQL the `trials` id sequence is moved past them afterwards. A plain Optuna study
("plain") of the same N trials is built in the same database.

At each size, for studyctl and plain Optuna on the same database:
* per trial: the median interval between the starts of consecutive trials of a near-zero
  objective (random sampler), i.e. the claim-and-start cost of one more trial: `studyctl
  resume` (its trial loop, progress line included) vs `study.optimize`;
* resume: launch of the process to the first new trial's start;
* `status`, `studies`, `best`, `trials --format csv` (time and peak RSS), `report` (HTML) as
  CLI processes, vs what a plain-Optuna user runs for the same answer (the `optuna` CLI's
  `studies`/`best-trial`, a state count over `study.trials`, `trials_dataframe`-free CSV
  rows from `study.trials`, and `plot_optimization_history(...).write_html`).

Times are wall-clock seconds of whole processes on a shared, noisy machine: compare ratios
within one run (studyctl over plain Optuna; 100k over 1k), not absolute seconds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN = "host=127.0.0.1 port=5432 user=root dbname=postgres"
PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/{name}"
STUDY = "scale"
PLAIN = "plain"
MARK_START, MARK_END = "<!-- bench_scale:start -->", "<!-- bench_scale:end -->"

NOOP = """
from studyctl import function_objective


@function_objective("noop")
def noop(trial, ctx):
    return trial.suggest_float("x", 0.0, 1.0)
"""

SPEC = """
name = "{name}"
objective = "noop"
n_trials = {n_trials}
[sampler]
type = "random"
[worker]
trials_per_process = 1000000
"""

# What a plain-Optuna user runs for the same answers (one process each, like the CLI).
PLAIN_STATUS = """
import collections, optuna, sys
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
print(collections.Counter(t.state.name for t in study.get_trials(deepcopy=False)))
"""
PLAIN_CSV = """
import csv, optuna, sys
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
w = csv.writer(sys.stdout)
for t in study.get_trials(deepcopy=False):
    w.writerow([t.number, t.state.name, t.value, t.datetime_start, t.datetime_complete,
                *t.params.values(), *t.user_attrs.values()])
"""
PLAIN_REPORT = """
import optuna, sys
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
optuna.visualization.plot_optimization_history(study).write_html(sys.argv[3])
"""
PLAIN_LOOP = """
import optuna, sys
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2],
                          sampler=optuna.samplers.RandomSampler())
study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=int(sys.argv[3]))
"""


# Starts the measured command and reports its wall seconds and peak RSS (ru_maxrss, KiB) on
# stdout. Linux counts the memory of the process a command was forked from in the command's
# ru_maxrss (the pre-exec copy's high-water mark survives the exec), so a command started
# straight from this script, which grows as it reads the big studies, would be charged for
# it; started from this small interpreter instead, it is charged for its own pages only.
_MEASURE = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
elapsed = time.perf_counter() - start
print(elapsed, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def run_process(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run `cmd` to completion; (wall seconds, peak RSS in MiB) of `cmd` alone (see
    `_MEASURE`). Its output is discarded."""
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], env=env, cwd=cwd, capture_output=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
    elapsed, rss_kib, returncode = proc.stdout.decode().split()
    if int(returncode) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {returncode}: {proc.stderr.decode()[-2000:]}")
    return float(elapsed), int(rss_kib) / 1024  # Linux: KiB


# --- building studies --------------------------------------------------------------------


def bulk_insert_trials(url: str, study_name: str, n: int, seed: int = 0) -> None:
    """Write `n` finished trials of `study_name` into Optuna's tables in one transaction."""
    import sqlalchemy as sa
    from optuna.distributions import FloatDistribution, distribution_to_json
    from optuna.storages._rdb import models as m

    rng = random.Random(seed)
    dist = distribution_to_json(FloatDistribution(0.0, 1.0))
    engine = sa.create_engine(url)
    t0 = datetime(2026, 1, 1)
    with engine.begin() as conn:
        study_id = conn.execute(
            sa.select(m.StudyModel.study_id).where(m.StudyModel.study_name == study_name)
        ).scalar_one()
        first_id = (conn.execute(sa.text("SELECT max(trial_id) FROM trials")).scalar() or 0) + 1
        first_number = conn.execute(
            sa.text("SELECT count(*) FROM trials WHERE study_id = :s"), {"s": study_id}
        ).scalar_one()
        trials, values, params, uattrs, sattrs, inter = [], [], [], [], [], []
        last_failed: str | None = None
        for i in range(n):
            tid, number = first_id + i, first_number + i
            r = rng.random()
            state = "FAIL" if r < 0.04 else "PRUNED" if r < 0.10 else "COMPLETE"
            start = t0 + timedelta(seconds=2 * number)
            trials.append(
                {
                    "trial_id": tid,
                    "number": number,
                    "study_id": study_id,
                    "state": state,
                    "datetime_start": start,
                    "datetime_complete": start + timedelta(seconds=1.5),
                }
            )
            x = rng.random()
            params.append(
                {"trial_id": tid, "param_name": "x", "param_value": x, "distribution_json": dist}
            )
            uattrs.append({"trial_id": tid, "key": "duration_s", "value_json": "1.5"})
            uattrs.append(
                {
                    "trial_id": tid,
                    "key": "worker",
                    "value_json": json.dumps({"host": "bench", "pid": 1, "gpus": ""}),
                }
            )
            if state == "COMPLETE":
                values.append(
                    {"trial_id": tid, "objective": 0, "value": x * x, "value_type": "FINITE"}
                )
            elif state == "PRUNED":
                for step in (0, 1):
                    inter.append(
                        {
                            "trial_id": tid,
                            "step": step,
                            "intermediate_value": x + 1 - step,
                            "intermediate_value_type": "FINITE",
                        }
                    )
            if last_failed is not None:
                sattrs.append({"trial_id": tid, "key": "failed_trial", "value_json": last_failed})
                sattrs.append(
                    {"trial_id": tid, "key": "retry_history", "value_json": f"[{last_failed}]"}
                )
            last_failed = str(number) if state == "FAIL" else None
        conn.execute(m.TrialModel.__table__.insert(), trials)
        children: list[tuple[Any, list[dict[str, Any]]]] = [
            (m.TrialValueModel.__table__, values),
            (m.TrialParamModel.__table__, params),
            (m.TrialUserAttributeModel.__table__, uattrs),
            (m.TrialSystemAttributeModel.__table__, sattrs),
            (m.TrialIntermediateValueModel.__table__, inter),
        ]
        for table, rows in children:
            if rows:
                conn.execute(table.insert(), rows)
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                    "(SELECT max(trial_id) FROM trials))"
                )
            )
    engine.dispose()


def build_studies(url: str, n: int, spec_path: str) -> None:
    """Create the studyctl study (with its spec record) and the plain one, then bulk-insert
    `n` finished trials into each."""
    import optuna

    from studyctl.spec import parse_spec
    from studyctl.storage import close_storage, open_storage
    from studyctl.storage.studies import open_study

    spec = parse_spec(tomllib.loads(SPEC.format(name=STUDY, n_trials=n + 1)), spec_path)
    storage = open_storage(url)
    open_study(storage, spec, create=True)
    optuna.create_study(study_name=PLAIN, storage=url)
    close_storage(url)
    bulk_insert_trials(url, STUDY, n, seed=1)
    bulk_insert_trials(url, PLAIN, n, seed=2)
    recount_finished(url, STUDY)
    analyze(url)


def analyze(url: str) -> None:
    """PostgreSQL's planner statistics for the tables just filled: a study grown one trial at
    a time gets them from autovacuum; a bulk insert measured at once would otherwise be
    planned as the nearly empty tables autovacuum last saw."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
    engine.dispose()


def recount_finished(url: str, study_name: str) -> None:
    """The bulk insert bypasses the storage that keeps `studyctl_studies.n_finished`: set it
    from the trials, as revision 0004 does for an existing database."""
    import sqlalchemy as sa

    from studyctl.storage import tables

    if not hasattr(tables, "count_finished_by_name"):  # a studyctl before revision 0004
        return
    engine = sa.create_engine(url)
    with tables.transaction(engine) as conn:
        count = tables.count_finished_by_name(conn, study_name)
        conn.execute(
            sa.update(tables.studies_table)
            .where(tables.studies_table.c.study_name == study_name)
            .values(n_finished=count)
        )
    engine.dispose()


class Database:
    """A fresh SQLite file or PostgreSQL database, dropped afterwards."""

    def __init__(self, backend: str, work: Path, tag: str) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.url = f"sqlite:///{work / tag}.db"
            self.pg_name = None
        else:
            import psycopg

            self.pg_name = f"studyctl_scale_{os.getpid()}_{tag}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
                admin.execute(f'CREATE DATABASE "{self.pg_name}"')
            self.url = PG_URL.format(name=self.pg_name)

    def drop(self) -> None:
        if self.pg_name is not None:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


# --- measuring ---------------------------------------------------------------------------


class Scale:
    def __init__(
        self, work: Path, quick: bool, baseline: Path | None, reps: int, report_max: int
    ) -> None:
        self.work = work
        self.on_partial: Any = lambda backend, n, out: None
        self.current = snapshot_worktree(work)
        self.report_max = report_max
        self.size = 0
        self.quick = quick
        self.baseline = baseline
        self.reps = reps
        self.objectives = work / "objectives"
        self.objectives.mkdir()
        (self.objectives / "noop.py").write_text(textwrap.dedent(NOOP))
        self.new_trials = 8 if quick else 25
        self.commands: tuple[str, ...] = (*COMMANDS, "trial_loop")  # what to measure
        self.python_pass = statistics.median(
            run_process([sys.executable, "-c", "pass"], self.env(None), work)[0] for _ in range(3)
        )

    def env(self, src: Path | None) -> dict[str, str]:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("STUDYCTL_STORAGE", None)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        return env

    def timed(self, cmd: list[str], src: Path | None = None) -> dict[str, float]:
        runs = [run_process(cmd, self.env(src), self.work) for _ in range(self.reps)]
        return {
            "s": round(statistics.median(r[0] for r in runs), 3),
            "rss_mib": round(max(r[1] for r in runs), 1),
        }

    def build(self, url: str, n: int) -> float:
        """The studyctl study and the plain one, `n` finished trials each; seconds taken.
        Built in a fresh child process: a child forked from a large parent reports the
        parent's pages in its peak RSS (ru_maxrss), so this process stays small."""
        import multiprocessing

        start = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=build_studies, args=(url, n, str(self.work / "scale.toml"))
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"building the {n}-trial studies failed ({child.exitcode})")
        return time.perf_counter() - start

    def set_budget(self, url: str, extra: int) -> None:
        """Let `resume` run `extra` more trials: budget = finished + extra."""
        import sqlalchemy as sa

        from studyctl.storage import tables

        engine = sa.create_engine(url)
        with tables.transaction(engine) as conn:
            record = tables.get_study_record(conn, STUDY)
            assert record is not None
            sid = conn.execute(
                sa.text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": STUDY}
            ).scalar_one()
            budget = tables.count_finished_trials(conn, sid) + extra
            spec = json.loads(record["spec_json"])
            spec["n_trials"] = budget
            tables.upsert_study_record(conn, STUDY, budget, json.dumps(spec, sort_keys=True))
        engine.dispose()

    def new_trial_starts(self, url: str, study: str, k: int) -> list[datetime]:
        import optuna

        trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
        starts = sorted(t.datetime_start for t in trials if t.datetime_start)
        return starts[-k:]

    def loop(self, cmd: list[str], url: str, study: str, src: Path | None) -> dict[str, float]:
        """Launch `cmd` (which runs `new_trials` trials); seconds from launch to the first
        trial's start, and the median interval between trial starts."""
        launched = datetime.now()
        run_process(cmd, self.env(src), self.work)
        starts = self.new_trial_starts(url, study, self.new_trials)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
        return {
            "to_first_trial_s": round((starts[0] - launched).total_seconds(), 3),
            "per_trial_s": round(statistics.median(gaps), 4),
        }

    def wanted(self, command: str) -> bool:
        if command not in self.commands:
            return False
        return command != "report" or (not self.quick and self.size <= self.report_max)

    def studyctl_figures(self, url: str, src: Path | None) -> dict[str, Any]:
        cli = [sys.executable, "-m", "studyctl.cli"]
        s = ["--storage", url]
        html = str(self.work / "report.html")
        commands = {
            "status": [*cli, "status", STUDY, *s],
            "studies": [*cli, "studies", *s],
            "best": [*cli, "best", STUDY, *s],
            "trials_csv": [*cli, "trials", STUDY, *s, "--format", "csv"],
            "report": [*cli, "report", STUDY, *s, "-o", html],
        }
        out: dict[str, Any] = {
            name: self.timed(cmd, src) for name, cmd in commands.items() if self.wanted(name)
        }
        if self.wanted("trial_loop"):
            self.set_budget(url, self.new_trials)
            resume = [*cli, "resume", STUDY, *s, "-q", "--objectives-dir", str(self.objectives)]
            out["trial_loop"] = self.loop(resume, url, STUDY, src)
        return out

    def plain_figures(self, url: str) -> dict[str, Any]:
        py = [sys.executable, "-c"]
        optuna_cli = [str(Path(sys.executable).parent / "optuna"), "--storage", url]
        commands = {
            "status": [*py, PLAIN_STATUS, PLAIN, url],
            "studies": [*optuna_cli, "studies", "-f", "json"],
            "best": [*optuna_cli, "best-trial", "--study-name", PLAIN, "-f", "json"],
            "trials_csv": [*py, PLAIN_CSV, PLAIN, url],
            "report": [*py, PLAIN_REPORT, PLAIN, url, str(self.work / "plain.html")],
        }
        out: dict[str, Any] = {
            name: self.timed(cmd)
            for name, cmd in commands.items()
            # the smoke run checks studyctl's side only
            if self.wanted(name) and not self.quick
        }
        if self.wanted("trial_loop"):
            loop = [*py, PLAIN_LOOP, PLAIN, url, str(self.new_trials)]
            out["trial_loop"] = self.loop(loop, url, PLAIN, None)
        return out

    def measure(self, backend: str, n: int) -> dict[str, Any]:
        import sqlalchemy as sa

        from studyctl.storage import schema

        self.size = n
        db = Database(backend, self.work, f"{backend}_{n}")
        try:
            built = self.build(db.url, n)
            print(f"  {backend} {n}: built in {built:.1f} s", file=sys.stderr, flush=True)
            out: dict[str, Any] = {"build_s": round(built, 1)}
            self.on_partial(backend, n, out)
            out["studyctl"] = self.studyctl_figures(db.url, self.current)
            self.on_partial(backend, n, out)
            out["plain_optuna"] = self.plain_figures(db.url)
            self.on_partial(backend, n, out)
            if self.baseline is not None:
                # The baseline's studyctl knows only the revisions it shipped with.
                engine = sa.create_engine(db.url)
                schema.downgrade_studyctl(engine, _baseline_head(self.baseline))
                out["baseline"] = self.studyctl_figures(db.url, self.baseline)
                schema.upgrade_studyctl(engine)
                engine.dispose()
            return out
        finally:
            db.drop()


def _baseline_head(src: Path) -> str:
    versions = src / "studyctl" / "migrations" / "versions"
    return max(p.name.split("_", 1)[0] for p in versions.glob("0*.py"))


def checkout_baseline(ref: str, work: Path) -> Path:
    """`ref`'s src/ (with its migrations where an installed studyctl has them)."""
    dest = work / "baseline"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src", "migrations"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    shutil.move(str(dest / "migrations"), str(dest / "src" / "studyctl" / "migrations"))
    return dest / "src"


def snapshot_worktree(work: Path) -> Path:
    """A copy of the working tree's src/ (and migrations), so that the measured studyctl
    stays the same while the run lasts."""
    dest = work / "current" / "src"
    shutil.copytree(REPO / "src", dest, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "migrations", dest / "studyctl" / "migrations")
    return dest


# --- the index studyctl adds to Optuna's table (revision 0004), measured ----------------

# The per-trial queries that read a study's trials: studyctl's budget count (before: over
# every trial; now: the counter and the live claims), Optuna's stale-trial sweep
# (heartbeat), the queued-trial pop (studyctl's indexed query), Optuna's trial numbering,
# and the state counts and best trial of a status.
PER_TRIAL_QUERIES = {
    "budget count (studyctl claim, before: count of finished trials)": "SELECT count(*) "
    "FROM trials WHERE study_id = :sid AND state IN ('COMPLETE', 'PRUNED')",
    "budget count (studyctl claim, now: n_finished + live claims + queued check)": "TAKEN",
    "running trials (Optuna heartbeat sweep)": "SELECT trial_id FROM trials "
    "WHERE state = 'RUNNING' AND study_id = :sid",
    "waiting trials (studyctl queued-trial pop)": "WAITING",
    "trial number (Optuna create_new_trial)": "SELECT count(trial_id) FROM trials "
    "WHERE study_id = :sid AND trial_id < :big",
    "state counts (status)": "SELECT state, count(*) FROM trials WHERE study_id = :sid "
    "GROUP BY state",
    "best trial (Optuna get_best_trial)": "SELECT t.trial_id FROM trials t JOIN trial_values v "
    "ON v.trial_id = t.trial_id WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND "
    "v.objective = 0 ORDER BY CASE v.value_type WHEN 'INF_NEG' THEN -1 WHEN 'FINITE' THEN 0 "
    "ELSE 1 END, v.value LIMIT 1",
}
INDEX_NAME = "ix_studyctl_trials_study_state"


def index_effect(url: str, reps: int = 30) -> dict[str, dict[str, float]]:
    """Median ms of each per-trial query without and with revision 0004's index on
    trials(study_id, state) (dropped for the first pass, then created again)."""
    import sqlalchemy as sa

    from studyctl.storage import tables

    sql_of = {"TAKEN": tables._TAKEN_AND_QUEUED_SQL, "WAITING": tables._WAITING_SQL}
    engine = sa.create_engine(url)
    out: dict[str, dict[str, float]] = {name: {} for name in PER_TRIAL_QUERIES}
    with engine.connect() as conn:
        sid = conn.execute(
            sa.text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": STUDY}
        ).scalar_one()
        params = {"sid": sid, "big": 2**31 - 1, "name": STUDY, "stale_before": datetime.now()}
        for label in ("without", "with"):
            if label == "without":
                conn.execute(sa.text(f"DROP INDEX IF EXISTS {INDEX_NAME}"))
            else:
                conn.execute(sa.text(f"CREATE INDEX {INDEX_NAME} ON trials (study_id, state)"))
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
            for name, sql in PER_TRIAL_QUERIES.items():
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    conn.execute(sa.text(sql_of.get(sql, sql)), params).all()
                    times.append(time.perf_counter() - start)
                out[name][f"{label}_index_ms"] = round(1000 * statistics.median(times), 2)
            conn.commit()
    engine.dispose()
    return out


IN_PROCESS = """
import io, json, os, resource, sys, time
from studyctl.inspect import summary
from studyctl.storage import open_storage
op, url = sys.argv[1], sys.argv[2]
storage = open_storage(url)
start = time.perf_counter()
if op == "status":
    summary.study_status(storage, "scale")
elif op == "studies":
    summary.list_studies(storage)
elif op == "best":
    summary.best_summary(storage, "scale")
elif op == "trials_csv":
    out = open(os.devnull, "w")
    if hasattr(summary, "write_trials_csv"):
        summary.write_trials_csv(storage, "scale", out)
    else:
        out.write(summary.trials_csv(summary.list_trials(storage, "scale")))
elapsed = time.perf_counter() - start
print(json.dumps({"s": round(elapsed, 3),
                  "rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def in_process(baseline_ref: str | None, sizes: list[int]) -> dict[str, Any]:
    """The inspection functions timed inside the process, after the imports (which dominate
    whole-process times on a loaded machine): seconds and the process's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="studyctl-scale-") as tmp:
        work = Path(tmp)
        bench = Scale(work, True, None, 1, 0)
        variants = {"studyctl": bench.current}
        if baseline_ref:
            variants["baseline"] = checkout_baseline(baseline_ref, work)
        result: dict[str, Any] = {}
        for n in sizes:
            db = Database("sqlite", work, f"inproc_{n}")
            bench.build(db.url, n)
            for variant, src in variants.items():
                if variant == "baseline":  # it knows only the revisions it shipped with
                    import sqlalchemy as sa

                    from studyctl.storage import schema

                    engine = sa.create_engine(db.url)
                    schema.downgrade_studyctl(engine, _baseline_head(src))
                    engine.dispose()
                for op in ("status", "studies", "best", "trials_csv"):
                    out = subprocess.run(
                        [sys.executable, "-c", IN_PROCESS, op, db.url],
                        env=bench.env(src),
                        cwd=work,
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    fig = json.loads(out.strip().splitlines()[-1])
                    result.setdefault(str(n), {}).setdefault(variant, {})[op] = fig
                    print(n, variant, op, fig, file=sys.stderr, flush=True)
        return result


def startup(baseline_ref: str | None, reps: int, size: int = 100) -> dict[str, Any]:
    """Median wall and CPU seconds of `python -c pass`, `studyctl --help` and `studyctl
    status`, `studies`, `best` and `trials` (a study of `size` trials on SQLite; `trials
    --format csv` too, and no `trials` table over 10,000 trials), for the baseline and the
    working tree, interleaved."""
    with tempfile.TemporaryDirectory(prefix="studyctl-scale-") as tmp:
        work = Path(tmp)
        bench = Scale(work, True, None, 1, 0)
        db = Database("sqlite", work, "startup")
        bench.build(db.url, size)
        variants = {"studyctl": bench.current}
        if baseline_ref:
            variants = {"baseline": checkout_baseline(baseline_ref, work), **variants}
        cli = [sys.executable, "-m", "studyctl.cli"]
        cmds = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [*cli, "--help"],
            "status": [*cli, "status", STUDY, "--storage", db.url],
            "studies": [*cli, "studies", "--storage", db.url],
            "best": [*cli, "best", STUDY, "--storage", db.url],
            "trials": [*cli, "trials", STUDY, "--storage", db.url],
            "trials --format csv": [*cli, "trials", STUDY, "--storage", db.url, "-f", "csv"],
        }
        if size > 10000:  # a table of every trial measures the table, not the start-up
            del cmds["trials"]
        times: dict[str, dict[str, list[float]]] = {v: {c: [] for c in cmds} for v in variants}
        cpu: dict[str, dict[str, list[float]]] = {v: {c: [] for c in cmds} for v in variants}
        for _ in range(reps):
            for variant, src in variants.items():
                for name, cmd in cmds.items():
                    wall, seconds = _wall_and_cpu(cmd, bench.env(src), work)
                    times[variant][name].append(wall)
                    cpu[variant][name].append(seconds)
        return {
            v: {
                c: {"s": round(statistics.median(ts), 3), "cpu_s": round(statistics.median(cs), 3)}
                for (c, ts), cs in zip(by_cmd.items(), cpu[v].values(), strict=True)
            }
            for v, by_cmd in times.items()
        }


def _wall_and_cpu(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one process: on a loaded machine the
    CPU time stays close to what the process costs on an idle one."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


# --- reporting ---------------------------------------------------------------------------

COMMANDS = ("status", "studies", "best", "trials_csv", "report")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def markdown(r: dict[str, Any]) -> str:
    sizes = [int(s) for s in r["sizes"]]
    lo, hi = str(sizes[0]), str(sizes[-1])
    lines = [
        MARK_START,
        "## Scale: studies of " + ", ".join(f"{s:,}" for s in sizes) + " finished trials",
        "",
        f"Run of {r['date']} ({r['machine']}): `{r['command']}`. Each study is built in "
        "seconds by a bulk insert into Optuna's tables (see the script's docstring); plain "
        "Optuna runs on the same database in the same run. Whole-process wall-clock seconds on "
        "a shared machine: read the ratios.",
        "",
    ]
    for backend, by_size in r["results"].items():
        lines += [f"### {backend}", ""]
        variants = [v for v in ("baseline", "studyctl") if v in by_size[lo]]
        head = ["figure"]
        for n in sizes:
            head += [f"{v} {n:,}" for v in variants] + [f"Optuna {n:,}"]
        head += [f"studyctl {hi}/{lo}", f"Optuna {hi}/{lo}"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def row(
            label: str, get: Any, by_size: dict[str, Any] = by_size, variants: list[str] = variants
        ) -> list[str]:
            cells = [label]
            for n in sizes:
                d = by_size[str(n)]
                cells += [f"{get(d[v]):.3g}" for v in variants]
                cells += [f"{get(d['plain_optuna']):.3g}"]
            a, b = by_size[lo], by_size[hi]
            cells += [ratio(get(b["studyctl"]), get(a["studyctl"]))]
            cells += [ratio(get(b["plain_optuna"]), get(a["plain_optuna"]))]
            return cells

        table = [
            row("per trial (s)", lambda d: d["trial_loop"]["per_trial_s"]),
            row("resume to first trial (s)", lambda d: d["trial_loop"]["to_first_trial_s"]),
        ]
        for c in COMMANDS:
            if all(c in by_size[str(n)]["studyctl"] for n in sizes):
                table.append(row(f"`{c}` (s)", lambda d, c=c: d[c]["s"]))
        table.append(
            row("`trials --format csv` peak RSS (MiB)", lambda d: d["trials_csv"]["rss_mib"])
        )
        lines += ["| " + " | ".join(cells) + " |" for cells in table]
        lines.append("")
    lines += [
        f"`python -c pass` took {r['python_pass_s']} s in this run. Targets: per trial at "
        "100k within 1.5x of 1k; each inspection command <= 1 s at 100k; `trials --format "
        "csv` in constant memory.",
        "",
        "![cost against study size](benchmarks/scale.png)",
        MARK_END,
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in r["sizes"]]
    backends = list(r["results"])
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 4.5), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        by_size = r["results"][backend]
        for variant, style in (("studyctl", "-"), ("baseline", ":"), ("plain_optuna", "--")):
            if variant not in by_size[str(sizes[0])]:
                continue
            for figure, colour in (
                ("per_trial", "C0"),
                ("status", "C1"),
                ("best", "C2"),
                ("trials_csv", "C3"),
            ):

                def get(d: dict[str, Any], figure: str = figure) -> float:
                    if figure == "per_trial":
                        return float(d["trial_loop"]["per_trial_s"])
                    return float(d[figure]["s"])

                base = get(by_size[str(sizes[0])]["plain_optuna"])
                ys = [get(by_size[str(n)][variant]) / base for n in sizes]
                label = f"{variant.replace('_', ' ')}: {figure.replace('_', ' ')}"
                ax.plot(sizes, ys, style, color=colour, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("finished trials in the study")
        ax.set_ylabel(f"cost / plain Optuna's at {sizes[0]:,}")
        ax.set_title(backend)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(text: str, path: Path) -> None:
    old = path.read_text() if path.exists() else ""
    if MARK_START in old and MARK_END in old:
        before, rest = old.split(MARK_START, 1)
        after = rest.split(MARK_END, 1)[1]
        path.write_text(before + text + after)
    else:
        path.write_text(old.rstrip("\n") + "\n\n" + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, SQLite; < 60 s")
    parser.add_argument("--sizes", help="comma-separated study sizes (default 1000,10000,100000)")
    parser.add_argument("--backends", help="sqlite,postgresql (default both)")
    parser.add_argument("--baseline", metavar="GIT_REF", help="also measure this ref's studyctl")
    parser.add_argument("--reps", type=int, default=None, help="runs of each command (median)")
    parser.add_argument(
        "--report-max",
        type=int,
        default=10000,
        help="measure `report` up to this size (its plots read every trial, in both tools)",
    )
    parser.add_argument(
        "--partial", metavar="FILE", help="keep the results so far in FILE after each step"
    )
    parser.add_argument("--no-write", action="store_true", help="print JSON, write no files")
    parser.add_argument(
        "--commands",
        help=f"comma-separated figures to measure (default all: {','.join(COMMANDS)},trial_loop)",
    )
    parser.add_argument(
        "--new-trials", type=int, help="trials each loop runs (default 8 with --quick, else 25)"
    )
    parser.add_argument(
        "--from-json",
        nargs="+",
        metavar="FILE",
        help="write the files from the JSON of earlier --no-write runs (one per backend, "
        "run side by side), measuring nothing",
    )
    parser.add_argument(
        "--index-effect",
        type=int,
        metavar="N",
        help="only time the per-trial queries on a study of N trials, without and with "
        "studyctl's index on Optuna's trials(study_id, state) (revision 0004)",
    )
    parser.add_argument(
        "--startup",
        action="store_true",
        help="only time `studyctl --help` and the reading commands on a study (SQLite) against "
        "`python -c pass`, for --baseline and the working tree",
    )
    parser.add_argument(
        "--startup-size",
        type=int,
        default=100,
        metavar="N",
        help="with --startup: the study's trials (default 100)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="only time the inspection functions inside the process (SQLite, --sizes), for "
        "--baseline and the working tree",
    )
    args = parser.parse_args()
    if args.in_process:
        sizes_ = [int(x) for x in (args.sizes or "1000,100000").split(",")]
        print(json.dumps(in_process(args.baseline, sizes_), indent=1))
        return
    if args.startup:
        print(json.dumps(startup(args.baseline, args.reps or 9, args.startup_size), indent=1))
        return
    if args.index_effect:
        effect: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="studyctl-scale-") as tmp:
            bench = Scale(Path(tmp), True, None, 1, 0)
            for backend in (args.backends or "sqlite,postgresql").split(","):
                db = Database(backend, Path(tmp), f"index_{backend}")
                try:
                    bench.build(db.url, args.index_effect)
                    effect[backend] = index_effect(db.url)
                finally:
                    db.drop()
        print(json.dumps({"trials": args.index_effect, "queries": effect}, indent=1))
        return
    if args.from_json:
        parts = [json.loads(Path(f).read_text()) for f in args.from_json]
        merged = {**parts[0], "results": {}}
        merged["command"] = " + ".join(p["command"] for p in parts)
        for part in parts:
            merged["results"].update(part["results"])
        write_files(merged)
        return
    default_sizes = "100,1000" if args.quick else "1000,10000,100000"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    backends = (args.backends or ("sqlite" if args.quick else "sqlite,postgresql")).split(",")
    with tempfile.TemporaryDirectory(prefix="studyctl-scale-") as tmp:
        work = Path(tmp)
        baseline = checkout_baseline(args.baseline, work) if args.baseline else None
        reps = args.reps or (1 if args.quick else 3)
        bench = Scale(work, args.quick, baseline, reps, args.report_max)
        bench.new_trials = args.new_trials or bench.new_trials
        if args.commands:
            bench.commands = tuple(args.commands.split(","))
        results: dict[str, Any] = {}
        if args.partial:

            def save(backend: str, n: int, out: dict[str, Any]) -> None:
                results.setdefault(backend, {})[str(n)] = out
                Path(args.partial).write_text(json.dumps(results, indent=1))

            bench.on_partial = save
        for backend in backends:
            results[backend] = {}
            for n in sizes:
                print(f"measuring {backend} at {n} trials", file=sys.stderr, flush=True)
                results[backend][str(n)] = bench.measure(backend, n)
        report = {
            "date": datetime.now().strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}",
            "command": "python scripts/bench_scale.py " + " ".join(sys.argv[1:]),
            "python_pass_s": round(bench.python_pass, 3),
            "sizes": [str(n) for n in sizes],
            "new_trials_per_loop": bench.new_trials,
            "baseline": args.baseline,
            "results": results,
        }
    if args.quick or args.no_write:
        print(json.dumps(report, indent=1))
        return
    write_files(report)


def write_files(report: dict[str, Any]) -> None:
    out = REPO / "benchmarks"
    (out / "scale.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, out / "scale.png")
    write_markdown(markdown(report), REPO / "BENCHMARKS.md")
    print(markdown(report))


if __name__ == "__main__":
    main()
