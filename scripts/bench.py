"""What studyctl costs and what it saves, measured side by side in one run.

    python scripts/bench.py            # full run: writes benchmarks/results.json,
                                       # BENCHMARKS.md and benchmarks/pruning.png
    python scripts/bench.py --quick    # a few minutes; a smoke run (CI), asserts no timing

Figures (ratios within one run: these machines are shared and noisy):
1. per-trial overhead: the same model/data/epochs/params by a bare Keras loop and by
   `studyctl run` (sequential, SQLite);
2. parallel speedup: a fixed study with 1 and 2 workers at one thread each;
3. memory: worker RSS after 10/100/300 trials, recycled trial processes vs. a plain
   in-process Optuna loop;
4. pruning: epochs trained and best val_loss with no pruning, median, Hyperband (TPE) and
   random search, over seeds;
5. start-up: `studyctl --help` vs `python -c pass`; a worker's time to its first trial;
6. storage under load: 1/4/8 workers, near-zero objective, SQLite and PostgreSQL, side by
   side with as many plain Optuna processes (`study.optimize`) on the same database;
7. what the search buys: studyctl's TPE (sequential, 2 workers, 2 workers with a median
   pruner) against KerasTuner's RandomSearch on the same model, space, data and epochs,
   over seeds: best val_loss at equal epochs, and epochs to reach RandomSearch's best.
8. recycle gap: one worker replacing its trial process after every trial, from one
   trial's end to the next one's start, with the warm spare (`[worker] prewarm`) and
   without.
9. whole process: 20 trials x 5 epochs of the digits MLP, each run a process timed from
   outside, rounds alternating the order: plain Optuna TPE on SQLite, studyctl without
   checkpoints, studyctl defaults (checkpoint every epoch, keep the best model) and
   KerasTuner's RandomSearch.

    python scripts/bench.py --only search   # one figure; merged into the existing results
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
STUDYCTL = [sys.executable, "-m", "studyctl.cli"]
PG_ADMIN = "host=127.0.0.1 port=5432 user=root dbname=postgres"
# Figure 8's trials: longer than a trial process's start-up (about 5 s idle), as the
# trials a worker recycles processes for are (minutes).
EPOCHS_RECYCLE = 40

MLP = """
from studyctl import TrainingData, keras_objective


def load_data():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    return TrainingData(x=x[:1400], y=d.target[:1400], x_val=x[1400:], y_val=d.target[1400:])


def build(units, lr):
    import keras
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy")
    return model


@keras_objective("bench_mlp", load_data=load_data)
def build_model(trial, ctx):
    return build(trial.suggest_int("units", 8, 128, log=True),
                 trial.suggest_float("lr", 1e-4, 3e-2, log=True))


def load_small():
    d = load_data()
    return TrainingData(x=d.x[:300], y=d.y[:300], x_val=d.x_val, y_val=d.y_val)


@keras_objective("bench_tiny", load_data=load_small)
def build_tiny(trial, ctx):
    return build(trial.suggest_int("units", 8, 64), 0.01)
"""

NOOP = """
from studyctl import function_objective


@function_objective("noop")
def noop(trial, ctx):
    return trial.suggest_float("x", 0, 1)
"""

BARE_LOOP = """
import json, os, sys, tempfile, time
sys.path.insert(0, {folder!r})
from bench_objectives import build, load_data
import tensorflow as tf
threads = int(os.environ.get("BENCH_THREADS", "0"))
if threads:  # as studyctl's --threads-per-worker sets them
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
import keras
data = load_data()
start = time.perf_counter()
for _ in range({n}):
    keras.backend.clear_session()
    model = build(32, 0.01)
    # With backup: the per-epoch checkpoint studyctl writes (Keras's BackupAndRestore).
    callbacks = [keras.callbacks.BackupAndRestore(tempfile.mkdtemp(), delete_checkpoint=False)]
    model.fit(data.x, data.y, validation_data=(data.x_val, data.y_val), batch_size=64,
              epochs={epochs}, verbose=0, callbacks=callbacks if {backup} else [])
print(json.dumps((time.perf_counter() - start) / {n}))
"""

PLAIN_OPTUNA = """
import json, os, sys, psutil, optuna
sys.path.insert(0, {folder!r})
from bench_objectives import build, load_data
import keras
optuna.logging.set_verbosity(optuna.logging.WARNING)
from bench_objectives import load_small
data = load_small()
marks, rss = {marks!r}, {{}}
def objective(trial):
    keras.backend.clear_session()
    model = build(trial.suggest_int("units", 8, 64), 0.01)
    h = model.fit(data.x, data.y, validation_data=(data.x_val, data.y_val),
                  batch_size=100, epochs=1, verbose=0)
    if trial.number + 1 in marks:
        rss[trial.number + 1] = psutil.Process().memory_info().rss / 2**20
    return h.history["val_loss"][-1]
optuna.create_study().optimize(objective, n_trials=max(marks))
print(json.dumps(rss))
"""


# Figure 6's plain Optuna worker: the near-zero objective and random sampler of studyctl's.
PLAIN_LOAD = """
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
name, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
study = optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler())
study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=n)
"""


KERAS_TUNER = """
import json, sys
sys.path.insert(0, {folder!r})
from bench_objectives import build, load_data
import keras_tuner as kt
data = load_data()


def hypermodel(hp):
    # The same model and space as the studyctl objective bench_mlp.
    return build(hp.Int("units", 8, 128, sampling="log"),
                 hp.Float("lr", 1e-4, 3e-2, sampling="log"))


tuner = kt.RandomSearch(hypermodel, objective="val_loss", max_trials={trials}, seed={seed},
                        directory={directory!r}, project_name="rs", overwrite=True)
tuner.search(data.x, data.y, validation_data=(data.x_val, data.y_val), batch_size=64,
             epochs={epochs}, verbose=0)
# Trial by trial: epochs trained and the best epoch's val_loss (KerasTuner's score).
trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
print(json.dumps([[{epochs}, t.score] for t in trials if t.score is not None]))
"""

PLAIN_TPE = """
import sys, optuna
sys.path.insert(0, {folder!r})
from bench_objectives import build, load_data
import keras
optuna.logging.set_verbosity(optuna.logging.WARNING)
data = load_data()


def objective(trial):
    keras.backend.clear_session()
    # The same model and space as the studyctl objective bench_mlp.
    model = build(trial.suggest_int("units", 8, 128, log=True),
                  trial.suggest_float("lr", 1e-4, 3e-2, log=True))
    h = model.fit(data.x, data.y, validation_data=(data.x_val, data.y_val), batch_size=64,
                  epochs={epochs}, verbose=0)
    return min(h.history["val_loss"])


study = optuna.create_study(storage={url!r}, sampler=optuna.samplers.TPESampler(seed={seed}))
study.optimize(objective, n_trials={trials})
"""


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


class Bench:
    def __init__(self, work: Path, quick: bool) -> None:
        self.work = work
        self.quick = quick
        self.objectives = work / "objectives"
        self.objectives.mkdir()
        (self.objectives / "bench_objectives.py").write_text(textwrap.dedent(MLP))
        (self.objectives / "noop.py").write_text(textwrap.dedent(NOOP))
        self.n = 0

    def spec(self, body: str) -> tuple[Path, str, str]:
        self.n += 1
        name = f"bench-{self.n}"
        path = self.work / f"{name}.toml"
        path.write_text(f'name = "{name}"\n' + textwrap.dedent(body))
        return path, name, f"sqlite:///{self.work / name}.db"

    def studyctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`studyctl run|worker ...` with the bench objectives."""
        return subprocess.run(
            [*STUDYCTL, *args, "--objectives-dir", str(self.objectives)],
            env=env(),
            cwd=self.work,
            check=True,
            capture_output=True,
            text=True,
        )

    def create(self, spec: Path, url: str) -> None:
        """Create the study (as `run` would) without running a trial."""
        code = (
            "from studyctl.execution.prepare import prepare_study\n"
            "from studyctl.spec import load_spec\n"
            f"prepare_study(load_spec({str(spec)!r}), {url!r}, {str(self.objectives)!r})"
        )
        subprocess.run([sys.executable, "-c", code], env=env(), cwd=self.work, check=True)

    def python(self, code: str) -> Any:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env(),
            cwd=self.work,
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def keras_tuner_code(self, directory: Path, trials: int, seed: int, epochs: int) -> str:
        """KerasTuner's RandomSearch over bench_mlp's model and space, as a script."""
        return KERAS_TUNER.format(
            folder=str(self.objectives),
            trials=trials,
            seed=seed,
            directory=str(directory),
            epochs=epochs,
        )

    # 1 ---------------------------------------------------------------------------------
    def overhead(self) -> dict[str, Any]:
        n, epochs = (3, 2) if self.quick else (10, 8)
        out: dict[str, Any] = {"trials": n, "epochs": epochs}
        for label, backup in [("bare_keras", False), ("bare_keras_backup", True)]:
            folder = str(self.objectives)
            bare = self.python(BARE_LOOP.format(folder=folder, n=n, epochs=epochs, backup=backup))
            out[f"{label}_s"] = round(bare, 3)
        for label, artifacts, reference in [
            ("studyctl", "", "bare_keras_backup"),
            (
                "studyctl_no_checkpoints",
                "checkpoints = false\nkeep_best_model = false",
                "bare_keras",
            ),
        ]:
            spec, name, url = self.spec(f"""
                objective = "bench_mlp"
                n_trials = {n}
                [params]
                units = 32
                lr = 0.01
                [training]
                epochs = {epochs}
                batch_size = 64
                [artifacts]
                path = "{self.work / "artifacts"}"
                {artifacts}
            """)
            self.studyctl("run", str(spec), "-q", "-s", url)
            import optuna

            trials = optuna.load_study(study_name=name, storage=url).trials
            # Per trial: the loop's wall time over n trials after the process and TF
            # started (first trial's start to last trial's end), so studyctl's work between
            # trials (budget claims, bookkeeping) counts too.
            first = min(t.datetime_start for t in trials if t.datetime_start)
            last = max(t.datetime_complete for t in trials if t.datetime_complete)
            ours = (last - first).total_seconds() / n
            out[f"{label}_s"] = round(ours, 3)
            out[f"{label}_ratio"] = round(ours / out[f"{reference}_s"], 3)
            out[f"{label}_ratio_to_bare"] = round(ours / out["bare_keras_s"], 3)
        return out

    # 2 ---------------------------------------------------------------------------------
    def speedup(self) -> dict[str, Any]:
        trials, epochs = (4, 1) if self.quick else (16, 4)
        walls = {}
        parts: dict[int, dict[str, float]] = {}
        for workers in (1, 2):
            spec, name, url = self.spec(f"""
                objective = "bench_mlp"
                n_trials = {trials}
                [sampler]
                type = "random"
                seed = 0
                [training]
                epochs = {epochs}
                batch_size = 64
                [artifacts]
                path = "{self.work / "artifacts"}"
            """)
            launched = datetime.now()
            start = time.perf_counter()
            self.studyctl(
                "run",
                str(spec),
                "-q",
                "-s",
                url,
                "--workers",
                str(workers),
                "--threads-per-worker",
                "1",
            )
            walls[workers] = time.perf_counter() - start
            ended = datetime.now()
            import optuna

            done = [t for t in optuna.load_study(study_name=name, storage=url).trials]
            starts = [t.datetime_start for t in done if t.datetime_start]
            ends = [t.datetime_complete for t in done if t.datetime_complete]
            # Where the wall time goes: start-up to the first trial, the trials (mean
            # duration; summed over workers they fill the rest unless a worker idles),
            # and from the last trial's end to the run's exit.
            parts[workers] = {
                "to_first_trial_s": round((min(starts) - launched).total_seconds(), 2),
                "mean_trial_s": round(
                    statistics.mean(
                        (t.datetime_complete - t.datetime_start).total_seconds()
                        for t in done
                        if t.datetime_complete and t.datetime_start
                    ),
                    2,
                ),
                "last_trial_end_to_exit_s": round((ended - max(ends)).total_seconds(), 2),
            }
        ceiling = self.bare_side_by_side(trials // 2, epochs)
        return {
            "trials": trials,
            "epochs": epochs,
            **ceiling,
            "wall_1_worker_s": round(walls[1], 1),
            "wall_2_workers_s": round(walls[2], 1),
            "speedup": round(walls[1] / walls[2], 2),
            "efficiency": round(walls[1] / walls[2] / 2, 2),
            "where_1_worker": parts[1],
            "where_2_workers": parts[2],
            # Per-trial time alone / two at once, against the bare loop's: 1.0 when a
            # worker's trial slows down side by side no more than the bare loop does.
            "trial_efficiency": round(
                parts[1]["mean_trial_s"] / parts[2]["mean_trial_s"] / ceiling["bare_efficiency"],
                2,
            ),
        }

    def bare_side_by_side(self, n: int, epochs: int) -> dict[str, float]:
        """What the machine allows: the bare Keras loop of figure 1 (the same model, batch
        size and epochs as figure 2), `n` trials at one thread, alone and as two processes
        at once. Its efficiency (per-trial time alone / side by side) bounds any two
        workers' on these cores: shared caches, memory bandwidth, a noisy neighbour."""
        code = BARE_LOOP.format(folder=str(self.objectives), n=n, epochs=epochs, backup=False)
        cmd = [sys.executable, "-c", code]
        one = {**env(), "BENCH_THREADS": "1", "OMP_NUM_THREADS": "1"}

        def run(count: int) -> list[float]:
            procs = [
                subprocess.Popen(cmd, env=one, cwd=self.work, stdout=subprocess.PIPE, text=True)
                for _ in range(count)
            ]
            outs = [p.communicate()[0] for p in procs]
            return [float(json.loads(o.strip().splitlines()[-1])) for o in outs]

        alone = run(1)[0]
        together = statistics.mean(run(2))
        return {
            "bare_trial_alone_s": round(alone, 3),
            "bare_trial_side_by_side_s": round(together, 3),
            "bare_efficiency": round(alone / together, 2),
        }

    # 3 ---------------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        marks = [3, 6] if self.quick else [10, 100, 300]
        spec, name, url = self.spec(f"""
            objective = "bench_tiny"
            n_trials = {max(marks) + 4}
            [sampler]
            type = "random"
            seed = 0
            [training]
            epochs = 1
            batch_size = 100
            [worker]
            trials_per_process = 25
            [artifacts]
            path = "{self.work / "artifacts"}"
            checkpoints = false
            keep_best_model = false
        """)
        self.create(spec, url)
        proc = subprocess.Popen(
            [
                *STUDYCTL,
                "worker",
                name,
                "-s",
                url,
                "-q",
                "--threads",
                "1",
                "--objectives-dir",
                str(self.objectives),
            ],
            env=env(),
            cwd=self.work,
            stdout=subprocess.DEVNULL,
        )
        import optuna
        from optuna.trial import TrialState

        storage = optuna.storages.RDBStorage(url)
        study_id = storage.get_study_id_from_name(name)
        rss: dict[int, float] = {}
        pending = list(marks)
        while proc.poll() is None and pending:
            # Sample once trial mark+2 has finished: the trial process has then trained (with
            # TensorFlow loaded) even if it was just replaced after trial mark.
            done = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
            if len(done) >= pending[0] + 2:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
                rss[pending.pop(0)] = sum(p.memory_info().rss for p in tree) / 2**20
            time.sleep(0.1)
        proc.wait()
        plain = self.python(PLAIN_OPTUNA.format(folder=str(self.objectives), marks=marks))
        return {
            "trials": marks,
            "studyctl_worker_mib": {str(k): round(v, 1) for k, v in rss.items()},
            "plain_optuna_loop_mib": {k: round(v, 1) for k, v in plain.items()},
        }

    # 4 ---------------------------------------------------------------------------------
    def pruning(self) -> dict[str, Any]:
        seeds, trials, epochs = ([0], 6, 3) if self.quick else ([0, 1, 2], 24, 10)
        configs = {
            "tpe, no pruning": ("tpe", "none"),
            "tpe + median": ("tpe", "median"),
            "tpe + hyperband": ("tpe", "hyperband"),
            "random (KerasTuner default), no pruning": ("random", "none"),
        }
        import optuna

        out: dict[str, Any] = {}
        curves: dict[str, list[list[tuple[int, float]]]] = {}
        for label, (sampler, pruner) in configs.items():
            runs: list[dict[str, Any]] = []
            for seed in seeds:
                pruner_opts = {
                    "median": "n_startup_trials = 3\nn_warmup_steps = 1",
                    "hyperband": "min_resource = 1\nreduction_factor = 3",
                }
                spec, name, url = self.spec(f"""
                    objective = "bench_mlp"
                    n_trials = {trials}
                    [sampler]
                    type = "{sampler}"
                    seed = {seed}
                    [pruner]
                    type = "{pruner}"
                    {pruner_opts.get(pruner, "")}
                    [training]
                    epochs = {epochs}
                    batch_size = 64
                    objective_value = "best"
                    [artifacts]
                    path = "{self.work / "artifacts"}"
                    checkpoints = false
                    keep_best_model = false
                """)
                self.studyctl("run", str(spec), "-q", "-s", url)
                study = optuna.load_study(study_name=name, storage=url)
                spent, best, curve = 0, float("inf"), []
                for t in sorted(study.trials, key=lambda t: t.number):
                    spent += len(t.intermediate_values)
                    if t.intermediate_values:
                        best = min(best, min(t.intermediate_values.values()))
                    curve.append((spent, best))
                runs.append(
                    {"seed": seed, "epochs": spent, "best_val_loss": round(best, 4), "curve": curve}
                )
            curves[label] = [r["curve"] for r in runs]
            out[label] = {
                "epochs_mean": round(statistics.mean(r["epochs"] for r in runs), 1),
                "best_val_loss_mean": round(statistics.mean(r["best_val_loss"] for r in runs), 4),
                "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
            }
        # Epochs each configuration needed to reach the no-pruning study's best value.
        reference = [c[-1][1] for c in curves["tpe, no pruning"]]
        for label in configs:
            needed = []
            for curve, target in zip(curves[label], reference, strict=True):
                hit = next((spent for spent, best in curve if best <= target), None)
                needed.append(hit)
            base = [c[-1][0] for c in curves["tpe, no pruning"]]
            ratios = [n / b for n, b in zip(needed, base, strict=True) if n is not None]
            out[label]["epochs_to_reach_no_pruning_best_ratio"] = (
                round(statistics.mean(ratios), 2) if len(ratios) == len(needed) else None
            )
            out[label]["reached_in"] = f"{len(ratios)}/{len(needed)} seeds"
        out["_curves"] = curves
        return out

    # 5 ---------------------------------------------------------------------------------
    def startup(self) -> dict[str, Any]:
        reps = 3 if self.quick else 7

        def median_time(cmd: list[str]) -> float:
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                subprocess.run(cmd, env=env(), check=True, capture_output=True)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        bare = median_time([sys.executable, "-c", "pass"])
        helped = median_time([*STUDYCTL, "--help"])
        spec, name, url = self.spec(f"""
            objective = "bench_mlp"
            n_trials = 1
            [training]
            epochs = 1
            [artifacts]
            path = "{self.work / "artifacts"}"
        """)
        self.create(spec, url)
        launched = datetime.now()
        self.studyctl("worker", name, "-s", url, "-q")
        import optuna

        first = optuna.load_study(study_name=name, storage=url).trials[0].datetime_start
        assert first is not None
        return {
            "python_pass_s": round(bare, 3),
            "studyctl_help_s": round(helped, 3),
            "help_over_python_s": round(helped - bare, 3),
            "worker_to_first_trial_s": round((first - launched).total_seconds(), 2),
        }

    def recycle_gap(self) -> dict[str, Any]:
        """One worker, trials_per_process = 1: from one trial's end to the next one's start
        across each recycle, with the warm spare ([worker] prewarm) and without, one run
        after the other in the same bench run. A spare hides its start-up only behind
        a trial that lasts longer than that start-up, so the trials train 40 epochs; the
        spare's own wait for its start-up (warm after the previous trial ended) is
        reported apart from the hand-over itself."""
        trials = 3 if self.quick else 4
        gaps: dict[str, list[float]] = {"prewarm": [], "cold": []}
        warm_late: list[float] = []
        handover: list[float] = []
        for label, prewarm in [("cold", "false"), ("prewarm", "true")]:
            spec, name, url = self.spec(f"""
                objective = "bench_mlp"
                n_trials = {trials}
                [params]
                units = 32
                lr = 0.01
                [training]
                epochs = {4 if self.quick else EPOCHS_RECYCLE}
                batch_size = 64
                [worker]
                trials_per_process = 1
                prewarm = {prewarm}
                [artifacts]
                path = "{self.work / "artifacts"}"
            """)
            self.create(spec, url)
            self.studyctl("worker", name, "-s", url, "-q")
            import optuna

            done = sorted(
                optuna.load_study(study_name=name, storage=url).trials,
                key=lambda t: t.number,
            )
            for before, after in itertools.pairwise(done):
                assert before.datetime_complete and after.datetime_start
                gap = after.datetime_start - before.datetime_complete
                gaps[label].append(gap.total_seconds())
                if label == "prewarm":
                    info = after.user_attrs["worker"]
                    ended = before.datetime_complete.timestamp()
                    warm_late.append(max(0.0, info["process_warm_at"] - ended))
                    handover.append(
                        after.datetime_start.timestamp() - max(ended, info["process_warm_at"])
                    )
        return {
            "recycle_trials_per_run": trials,
            "recycle_epochs": EPOCHS_RECYCLE,
            "recycle_gap_cold_s": round(statistics.median(gaps["cold"]), 2),
            "recycle_gap_prewarm_s": round(statistics.median(gaps["prewarm"]), 2),
            "recycle_gaps_cold_s": [round(g, 2) for g in gaps["cold"]],
            "recycle_gaps_prewarm_s": [round(g, 2) for g in gaps["prewarm"]],
            "recycle_spare_warm_after_trial_end_s": [round(g, 2) for g in warm_late],
            "recycle_handover_s": [round(g, 2) for g in handover],
        }

    # 9 ---------------------------------------------------------------------------------
    def whole(self) -> dict[str, Any]:
        """The same search, whole processes from start to exit: plain Optuna, studyctl
        without checkpoints, studyctl's defaults and KerasTuner; each round runs the four
        in a rotated order, and each figure is the median over rounds."""
        rounds, trials, epochs = (1, 3, 1) if self.quick else (3, 20, 5)
        times: dict[str, list[float]] = {
            "plain_optuna": [],
            "studyctl_no_checkpoints": [],
            "studyctl_defaults": [],
            "keras_tuner": [],
        }

        def timed(cmd: list[str]) -> float:
            start = time.perf_counter()
            subprocess.run(cmd, env=env(), cwd=self.work, check=True, capture_output=True)
            return time.perf_counter() - start

        def studyctl(checkpoints: str, seed: int) -> float:
            spec, _, url = self.spec(f"""
                objective = "bench_mlp"
                n_trials = {trials}
                [sampler]
                type = "tpe"
                seed = {seed}
                [training]
                epochs = {epochs}
                batch_size = 64
                objective_value = "best"
                [artifacts]
                path = "{self.work / "artifacts"}"
                {checkpoints}
            """)
            args = ["run", str(spec), "-q", "-s", url, "--objectives-dir", str(self.objectives)]
            return timed([*STUDYCTL, *args])

        def plain(seed: int) -> float:
            url = f"sqlite:///{self.work}/plain-{seed}.db"
            code = PLAIN_TPE.format(
                folder=str(self.objectives), url=url, seed=seed, trials=trials, epochs=epochs
            )
            return timed([sys.executable, "-c", code])

        def keras_tuner(seed: int) -> float:
            code = self.keras_tuner_code(self.work / f"kt-whole-{seed}", trials, seed, epochs)
            return timed([sys.executable, "-c", code])

        runs: dict[str, Any] = {
            "plain_optuna": plain,
            "studyctl_no_checkpoints": lambda seed: studyctl(
                "checkpoints = false\nkeep_best_model = false", seed
            ),
            "studyctl_defaults": lambda seed: studyctl("", seed),
            "keras_tuner": keras_tuner,
        }
        order = list(runs)
        for seed in range(rounds):
            for label in order[seed % len(order) :] + order[: seed % len(order)]:
                times[label].append(runs[label](seed))
        out: dict[str, Any] = {"rounds": rounds, "trials": trials, "epochs": epochs}
        plain_s = statistics.median(times["plain_optuna"])
        for label, values in times.items():
            out[f"{label}_s"] = round(statistics.median(values), 1)
            out[f"{label}_runs_s"] = [round(v, 1) for v in values]
            out[f"{label}_ratio"] = round(statistics.median(values) / plain_s, 3)
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        return out

    # 6 ---------------------------------------------------------------------------------
    def storage_load(self) -> dict[str, Any]:
        trials = 20 if self.quick else 120
        counts = [1, 4] if self.quick else [1, 4, 8]
        out: dict[str, Any] = {}
        for backend in ("sqlite", "postgresql"):
            for workers in counts:
                url, drop = self._url(backend)
                try:
                    spec, name, _ = self.spec(f"""
                        objective = "noop"
                        n_trials = {trials}
                        [sampler]
                        type = "random"
                        [worker]
                        trials_per_process = 100000
                    """)
                    run = subprocess.run(
                        [
                            *STUDYCTL,
                            "run",
                            str(spec),
                            "-q",
                            "-s",
                            url,
                            "--workers",
                            str(workers),
                            "--objectives-dir",
                            str(self.objectives),
                        ],
                        env=env(),
                        cwd=self.work,
                        capture_output=True,
                        text=True,
                    )
                    rate, errors = _rate(url, name, trials, [run.returncode])
                    plain_rate, plain_errors = self._plain_load(url, trials, workers)
                    out[f"{backend} x{workers}"] = {
                        "trials_per_s": rate,
                        "errors": errors,
                        "plain_optuna_trials_per_s": plain_rate,
                        "plain_optuna_errors": plain_errors,
                    }
                finally:
                    drop()
        return out

    def _plain_load(self, url: str, trials: int, workers: int) -> tuple[float, int]:
        """Plain Optuna on the same database: `workers` processes of `study.optimize` with
        the same objective and sampler, `trials` in all."""
        import optuna

        name = "plain"
        optuna.create_study(study_name=name, storage=url)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", PLAIN_LOAD, name, url, str(trials // workers)],
                env=env(),
                cwd=self.work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        return _rate(url, name, trials, [p.wait() for p in procs])

    # 7 ---------------------------------------------------------------------------------
    def search(self) -> dict[str, Any]:
        """Best val_loss at equal epochs, and epochs to reach RandomSearch's best, over seeds.

        Every configuration trains the same bench_mlp model (units, lr) on the same digits
        split for the same epochs per trial. A study's curve orders its trials by completion
        time (with workers, the order in which results became known) and counts each trial's
        epochs (a pruned trial's only up to its last report).
        """
        seeds, trials, epochs = ([0], 3, 1) if self.quick else ([0, 1, 2, 3, 4], 15, 4)
        budget = trials * epochs  # RandomSearch's epochs: the budget every row is read at
        startup = max(1, trials // 3)
        tpe = f'type = "tpe"\nn_startup_trials = {startup}'
        configs: dict[str, tuple[str, str, int, int]] = {
            # label: sampler table, pruner table, workers, n_trials
            "studyctl tpe, sequential": (tpe, "", 0, trials),
            "studyctl tpe, 2 workers": (tpe, "", 2, trials),
            # Pruned trials cost fewer epochs: more trials, read at the same epoch budget.
            "studyctl tpe + median pruner, 2 workers": (
                tpe,
                f'type = "median"\nn_startup_trials = {startup}\nn_warmup_steps = 1',
                2,
                trials * 3 // 2,
            ),
        }
        import optuna

        curves: dict[str, list[list[tuple[int, float]]]] = {"keras-tuner RandomSearch": []}
        for seed in seeds:
            folder = self.work / f"kt-{seed}"
            rs = self.python(self.keras_tuner_code(folder, trials, seed, epochs))
            curves["keras-tuner RandomSearch"].append(_curve(rs))
        for label, (sampler, pruner, workers, n_trials) in configs.items():
            curves[label] = []
            for seed in seeds:
                spec, name, url = self.spec(f"""
                    objective = "bench_mlp"
                    n_trials = {n_trials}
                    [sampler]
                    seed = {seed}
                    {sampler}
                    [pruner]
                    {pruner}
                    [training]
                    epochs = {epochs}
                    batch_size = 64
                    objective_value = "best"
                    [artifacts]
                    path = "{self.work / "artifacts"}"
                    checkpoints = false
                    keep_best_model = false
                """)
                args = ["run", str(spec), "-q", "-s", url]
                if workers:
                    args += ["--workers", str(workers), "--threads-per-worker", "1"]
                self.studyctl(*args)
                study = optuna.load_study(study_name=name, storage=url)
                done = sorted(
                    (t for t in study.trials if t.datetime_complete and t.intermediate_values),
                    key=lambda t: t.datetime_complete,  # type: ignore[arg-type, return-value]
                )
                curves[label].append(
                    _curve(
                        [
                            [len(t.intermediate_values), min(t.intermediate_values.values())]
                            for t in done
                        ]
                    )
                )
        out: dict[str, Any] = {
            "seeds": seeds,
            "trials": trials,
            "epochs_per_trial": epochs,
            "epoch_budget": budget,
            "tpe_n_startup_trials": startup,
        }
        targets = [c[-1][1] for c in curves["keras-tuner RandomSearch"]]
        for label, runs in curves.items():
            at_budget = [_best_at(c, budget) for c in runs]
            needed = [
                next((spent for spent, best in c if best <= target), None)
                for c, target in zip(runs, targets, strict=True)
            ]
            reached = [n / budget for n in needed if n is not None]
            out[label] = {
                "best_val_loss_at_budget": [round(v, 4) for v in at_budget],
                "best_val_loss_at_budget_mean": round(statistics.mean(at_budget), 4),
                "epochs_to_reach_random_search_best": needed,
                "epochs_to_reach_ratio_mean": round(statistics.mean(reached), 2)
                if reached
                else None,
                "reached_in": f"{len(reached)}/{len(needed)} seeds",
                "trials_run": [len(c) for c in runs],
            }
        sequential = out["studyctl tpe, sequential"]["best_val_loss_at_budget_mean"]
        parallel = out["studyctl tpe, 2 workers"]["best_val_loss_at_budget_mean"]
        out["parallel_over_sequential"] = round(parallel / sequential, 3)
        out["_curves"] = curves
        return out

    def _url(self, backend: str) -> tuple[str, Any]:
        if backend == "sqlite":
            self.n += 1
            return f"sqlite:///{self.work}/load{self.n}.db", lambda: None
        import psycopg

        name = f"studyctl_bench_{os.getpid()}_{self.n}"
        self.n += 1
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')

        def drop() -> None:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            admin.close()

        return f"postgresql+psycopg://root@127.0.0.1:5432/{name}", drop


def _rate(url: str, name: str, expected: int, returncodes: list[int]) -> tuple[float, int]:
    """Trials per second of a finished study (first start to last end) and its errors: trials
    not COMPLETE, processes that failed, trials missing or extra."""
    import optuna

    ts = optuna.load_study(study_name=name, storage=url).trials
    start = min(t.datetime_start for t in ts if t.datetime_start)
    end = max(t.datetime_complete for t in ts if t.datetime_complete)
    errors = (
        sum(1 for t in ts if t.state.name != "COMPLETE")
        + sum(1 for code in returncodes if code != 0)
        + (len(ts) != expected)
    )
    return round(len(ts) / (end - start).total_seconds(), 1), errors


def _curve(trials: list[list[float]]) -> list[tuple[int, float]]:
    """(epochs so far, best value so far) after each trial, in the order given."""
    spent, best, curve = 0, float("inf"), []
    for n_epochs, value in trials:
        spent += int(n_epochs)
        best = min(best, float(value))
        curve.append((spent, best))
    return curve


def _best_at(curve: list[tuple[int, float]], budget: int) -> float:
    """The best value found within `budget` epochs."""
    within = [best for spent, best in curve if spent <= budget]
    return within[-1] if within else float("inf")


def plot_search(curves: dict[str, list[list[tuple[int, float]]]], budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for color, (label, runs) in enumerate(curves.items()):
        for i, run in enumerate(runs):
            xs, ys = zip(*run, strict=True)
            ax.step(
                xs, ys, where="post", alpha=0.7, color=f"C{color}", label=label if i == 0 else None
            )
    ax.axvline(budget, color="grey", linestyle=":", label="RandomSearch's epochs")
    ax.set_xlabel("epochs trained (cumulative)")
    ax.set_ylabel("best val_loss so far")
    ax.set_yscale("log")
    ax.set_title("studyctl TPE vs KerasTuner RandomSearch (one line per seed)")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_pruning(curves: dict[str, list[list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in curves.items():
        for i, run in enumerate(runs):
            xs, ys = zip(*run, strict=True)
            ax.step(
                xs,
                ys,
                where="post",
                alpha=0.8,
                label=label if i == 0 else None,
                color={"tpe, no pruning": "C0", "tpe + median": "C1", "tpe + hyperband": "C2"}.get(
                    label, "C3"
                ),
            )
    ax.set_xlabel("epochs trained (cumulative)")
    ax.set_ylabel("best val_loss so far")
    ax.set_yscale("log")
    ax.set_title("Best value against epochs spent (one line per seed)")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def markdown(r: dict[str, Any]) -> str:
    o, s, m, st = r["overhead"], r["speedup"], r["memory"], r["startup"]
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Command: `{r['command']}`"
        + "".join(
            f"; figure {list(FIGURES).index(key) + 1} ({key}) run on {run['date']} with "
            f"`{run['command']}`"
            for key, run in r.get("runs", {}).items()
        )
        + ". Raw results: [benchmarks/results.json](benchmarks/results.json).",
        "",
        "| # | figure | result | target |",
        "|---|---|---|---|",
        f"| 1 | time per trial, studyctl run vs a bare Keras loop ({o['trials']} trials of "
        f"{o['epochs']} epochs, digits MLP) | without checkpoints: "
        f"{o['studyctl_no_checkpoints_s']} s vs {o['bare_keras_s']} s = "
        f"**{o['studyctl_no_checkpoints_ratio']}x**; with per-epoch checkpoints and the best "
        f"model kept (the default): {o['studyctl_s']} s vs {o['bare_keras_backup_s']} s for the "
        f"bare loop with the same BackupAndRestore = **{o['studyctl_ratio']}x** "
        f"({o['studyctl_ratio_to_bare']}x the loop without it) | <= 1.05x |",
        f"| 2 | {s['trials']} trials, 1 vs 2 workers at 1 thread | {s['wall_1_worker_s']} s vs "
        f"{s['wall_2_workers_s']} s: speedup {s['speedup']}x, **efficiency {s['efficiency']}**"
        + (
            f"; start-up to the first trial {s['where_1_worker']['to_first_trial_s']} s vs "
            f"{s['where_2_workers']['to_first_trial_s']} s, mean trial "
            f"{s['where_1_worker']['mean_trial_s']} s vs {s['where_2_workers']['mean_trial_s']}"
            f" s, last trial's end to exit {s['where_1_worker']['last_trial_end_to_exit_s']} s "
            f"vs {s['where_2_workers']['last_trial_end_to_exit_s']} s"
            if "where_1_worker" in s
            else ""
        )
        + (
            f"; the bare Keras loop, the same trials as two processes at once: "
            f"{s['bare_trial_alone_s']} s alone vs {s['bare_trial_side_by_side_s']} s a trial "
            f"(**the machine's efficiency {s['bare_efficiency']}**; studyctl's trials "
            f"{s['trial_efficiency']} of it)"
            if "bare_efficiency" in s
            else ""
        )
        + " | >= 0.9 |",
        f"| 3 | worker RSS (MiB) after {m['trials']} trials: studyctl (recycling every 25) / "
        f"plain in-process Optuna | {list(m['studyctl_worker_mib'].values())} / "
        f"{list(m['plain_optuna_loop_mib'].values())} | growth 10->300 <= 150 MiB |",
    ]
    for label, p in r["pruning"].items():
        if label.startswith("_"):
            continue
        lines.append(
            f"| 4 | {label} | {p['epochs_mean']} epochs, best val_loss {p['best_val_loss_mean']}"
            f", epochs to reach the no-pruning best: "
            + (
                f"{p['epochs_to_reach_no_pruning_best_ratio']}x"
                if p["epochs_to_reach_no_pruning_best_ratio"] is not None
                else "not in every seed"
            )
            + f" (reached in {p['reached_in']}) | "
            "Hyperband <= 0.5x |"
        )
    lines.append(
        f"| 5 | `studyctl --help` vs `python -c pass` | {st['studyctl_help_s']} s vs "
        f"{st['python_pass_s']} s (+{st['help_over_python_s']} s); worker start to first "
        f"trial {st['worker_to_first_trial_s']} s | <= 0.5 s over |"
    )
    for label, v in r["storage"].items():
        plain = (
            f"; plain Optuna {v['plain_optuna_trials_per_s']} trials/s "
            f"({v['plain_optuna_errors']} errors): studyctl "
            f"**{v['trials_per_s'] / v['plain_optuna_trials_per_s']:.2f}x**"
            if "plain_optuna_trials_per_s" in v
            else ""
        )
        lines.append(
            f"| 6 | near-zero objective, {label} workers | studyctl {v['trials_per_s']} "
            f"trials/s, {v['errors']} errors{plain} | 0 errors; 1 worker >= plain Optuna |"
        )
    if "search" in r:
        q = r["search"]
        for label, v in q.items():
            if not isinstance(v, dict):
                continue
            reach = (
                f"{v['epochs_to_reach_ratio_mean']}x its epochs"
                if v["epochs_to_reach_ratio_mean"] is not None
                else "never"
            )
            reach = f"reaches RandomSearch's best in {reach} ({v['reached_in']})"
            if label == "keras-tuner RandomSearch":
                reach = (
                    f"finds its final best after {v['epochs_to_reach_ratio_mean']}x its "
                    "epochs (the reference)"
                )
            lines.append(
                f"| 7 | {label}: best val_loss after {q['epoch_budget']} epochs ({q['trials']} "
                f"trials of {q['epochs_per_trial']} epochs for RandomSearch), mean of "
                f"{len(q['seeds'])} seeds | **{v['best_val_loss_at_budget_mean']}** "
                f"{v['best_val_loss_at_budget']}; {reach} | below RandomSearch |"
            )
        lines.append(
            f"| 7 | TPE with 2 workers vs sequential, same trials: mean best val_loss ratio "
            f"| **{q['parallel_over_sequential']}** | <= 1 (no loss from parallelism) |"
        )
    if "recycle" in r:
        g = r["recycle"]
        lines.append(
            "| 8 | gap between trials at a trial-process recycle (1 worker, trials_per_process"
            f" = 1, {g['recycle_epochs']}-epoch trials, median of "
            f"{len(g['recycle_gaps_prewarm_s'])}): warm spare "
            f"(`[worker] prewarm`, the default) vs none | **{g['recycle_gap_prewarm_s']} s** vs "
            f"{g['recycle_gap_cold_s']} s (each: {g['recycle_gaps_prewarm_s']} vs "
            f"{g['recycle_gaps_cold_s']}); the spare still warming after the trial ended "
            f"{g['recycle_spare_warm_after_trial_end_s']} s, hand-over once it is warm "
            f"{g['recycle_handover_s']} s | <= 0.5 s |"
        )
    if "whole" in r:
        w = r["whole"]
        lines.append(
            f"| 9 | whole process, {w['trials']} trials x {w['epochs']} epochs of the digits "
            f"MLP, median of {w['rounds']} rounds: plain Optuna TPE on SQLite / studyctl "
            "without checkpoints / studyctl defaults (checkpoint every epoch, keep the best "
            f"model) / KerasTuner RandomSearch | {w['plain_optuna_s']} s / "
            f"{w['studyctl_no_checkpoints_s']} s / **{w['studyctl_defaults_s']} s** / "
            f"{w['keras_tuner_s']} s = 1x / {w['studyctl_no_checkpoints_ratio']}x / "
            f"**{w['studyctl_defaults_ratio']}x** / {w['keras_tuner_ratio']}x (load average "
            f"after the runs {w['load_average']}) | defaults <= 1.05x plain Optuna |"
        )
    lines += [
        "",
        "![best value against epochs](benchmarks/pruning.png)",
        "",
        *(["![studyctl against KerasTuner](benchmarks/search.png)", ""] if "search" in r else []),
        "More workers or GPUs: run the same figure 2 study with "
        "`studyctl run SPEC --workers N --gpus 0-7 --gpus-per-worker K` on the bigger "
        "machine; efficiency = wall(1 worker) / wall(N workers) / N.",
        "",
    ]
    return "\n".join(lines)


# Figure name -> the Bench method that measures it, in the order a full run takes them.
FIGURES = {
    "overhead": "overhead",
    "speedup": "speedup",
    "memory": "memory",
    "pruning": "pruning",
    "startup": "startup",
    "storage": "storage_load",
    "search": "search",
    "recycle": "recycle_gap",
    "whole": "whole",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes; smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO,
        help="folder for BENCHMARKS.md and benchmarks/ (default: repo)",
    )
    parser.add_argument(
        "--only",
        choices=FIGURES,
        help="run one figure and merge it into the existing benchmarks/results.json",
    )
    args = parser.parse_args()
    folder = args.out / "benchmarks"
    command = "python scripts/bench.py" + (" --quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="studyctl-bench-") as tmp:
        bench = Bench(Path(tmp), args.quick)
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU",
            "command": command,
        }
        if args.only and (folder / "results.json").is_file():
            results = json.loads((folder / "results.json").read_text())
            results.setdefault("runs", {})[args.only] = {
                "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                "command": f"{command} --only {args.only}",
            }
        for key in FIGURES:
            if args.only and key != args.only:
                continue
            start = time.perf_counter()
            results[key] = getattr(bench, FIGURES[key])()
            print(f"{key}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    if "_curves" in results.get("pruning", {}):
        plot_pruning(results["pruning"].pop("_curves"), folder / "pruning.png")
    if "_curves" in results.get("search", {}):
        search = results["search"]
        plot_search(search.pop("_curves"), search["epoch_budget"], folder / "search.png")
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if all(key in results for key in FIGURES):
        # The table is generated; hand-written sections after it (## headings) are kept.
        page = args.out / "BENCHMARKS.md"
        old = page.read_text() if page.is_file() else ""
        kept = old[old.index("\n## ") :] if "\n## " in old else ""
        page.write_text(markdown(results).rstrip("\n") + "\n" + kept)
        print(markdown(results))
    else:  # --only without earlier results: no full table to write
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
