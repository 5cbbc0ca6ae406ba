"""Parallel speedup and worker memory, measured side by side in one run.

1. The same fixed study (16 trials of digits_mlp, random sampler with a fixed seed, no
   pruning, so both runs do the same work) with `--workers 1` and `--workers 2`, one
   TensorFlow thread per worker: wall-time ratio and parallel efficiency.
2. RSS of one `studyctl worker` (its process plus its trial process) after 10 and after N
   trials of a tiny Keras model, with trial processes recycled every 25 trials and with
   recycling off (one process for all trials).

Usage: python scripts/bench_workers.py [--quick] [--out benchmarks/workers.json]
Writes the JSON file and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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

SPEEDUP_SPEC = """
name = "bench-speedup-{n}"
objective = "digits_mlp"
metric = "val_loss"
n_trials = {trials}
[sampler]
type = "random"
seed = 0
[training]
epochs = {epochs}
batch_size = 64
"""

TINY_OBJECTIVE = """
from studyctl import TrainingData, keras_objective


def load_data():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype("float32")
    return TrainingData(x=x[:300], y=d.target[:300], x_val=x[300:400], y_val=d.target[300:400])


@keras_objective("tiny", load_data=load_data)
def build(trial, ctx):
    import keras
    units = trial.suggest_int("units", 8, 64)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(units, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model
"""

MEMORY_SPEC = """
name = "bench-memory"
objective = "tiny"
metric = "val_loss"
n_trials = {trials}
[sampler]
type = "random"
seed = 0
[training]
epochs = 1
batch_size = 100
[worker]
trials_per_process = {per_process}
"""


def env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_speedup(work: Path, workers: int, trials: int, epochs: int) -> float:
    spec = work / f"speedup{workers}.toml"
    spec.write_text(SPEEDUP_SPEC.format(n=workers, trials=trials, epochs=epochs))
    start = time.perf_counter()
    subprocess.run(
        [
            *STUDYCTL,
            "run",
            str(spec),
            "--workers",
            str(workers),
            "--threads-per-worker",
            "1",
            "-q",
            "-s",
            f"sqlite:///{work}/speedup{workers}.db",
            "--objectives-dir",
            str(REPO / "objectives"),
        ],
        check=True,
        env=env(),
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def tree_rss_mib(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20
    except psutil.NoSuchProcess:
        return float("nan")


def create_study(work: Path, spec: Path, url: str, objectives: Path) -> None:
    code = (
        "from studyctl.sequential import prepare_study\n"
        "from studyctl.spec import load_spec\n"
        f"prepare_study(load_spec({str(spec)!r}), {url!r}, {str(objectives)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env(), cwd=work)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "workers.json"))
    args = parser.parse_args()
    trials, epochs = (4, 1) if args.quick else (16, 4)
    mem_trials = 12 if args.quick else 200
    marks = [10, mem_trials - 1]
    work = Path(tempfile.mkdtemp(prefix="studyctl-bench-"))
    try:
        t1 = run_speedup(work, 1, trials, epochs)
        t2 = run_speedup(work, 2, trials, epochs)
        memory = {}
        for per_process in (25, 100000):
            tag = f"mem{per_process}"
            folder = work / f"{tag}-objectives"
            folder.mkdir()
            (folder / "tiny.py").write_text(textwrap.dedent(TINY_OBJECTIVE))
            spec = work / f"{tag}.toml"
            spec.write_text(MEMORY_SPEC.format(trials=mem_trials, per_process=per_process))
            url = f"sqlite:///{work}/{tag}.db"
            create_study(work, spec, url, folder)
            memory[per_process] = measure_worker(work, url, folder, marks)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "command": "python scripts/bench_workers.py" + (" --quick" if args.quick else ""),
        "speedup": {
            "trials": trials,
            "epochs": epochs,
            "wall_1_worker_s": round(t1, 1),
            "wall_2_workers_s": round(t2, 1),
            "speedup": round(t1 / t2, 2),
            "efficiency": round(t1 / t2 / 2, 2),
        },
        "memory_mib": {
            "recycle_every_25": {str(k): round(v, 1) for k, v in memory[25].items()},
            "no_recycling": {str(k): round(v, 1) for k, v in memory[100000].items()},
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    s, m = result["speedup"], result["memory_mib"]
    print(
        f"| figure | value |\n|---|---|\n"
        f"| {trials} trials, 1 worker | {s['wall_1_worker_s']} s |\n"
        f"| {trials} trials, 2 workers (1 thread each) | {s['wall_2_workers_s']} s |\n"
        f"| speedup / efficiency | {s['speedup']}x / {s['efficiency']} |\n"
        f"| worker RSS, recycling every 25 trials (after {marks}) | "
        f"{list(m['recycle_every_25'].values())} MiB |\n"
        f"| worker RSS, no recycling (after {marks}) | "
        f"{list(m['no_recycling'].values())} MiB |"
    )


def measure_worker(work: Path, url: str, objectives: Path, marks: list[int]) -> dict[int, float]:
    import optuna

    proc = subprocess.Popen(
        [
            *STUDYCTL,
            "worker",
            "bench-memory",
            "-s",
            url,
            "--objectives-dir",
            str(objectives),
            "--threads",
            "1",
            "-q",
        ],
        env=env(),
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    storage = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name("bench-memory")
    rss: dict[int, float] = {}
    pending = sorted(marks)
    while proc.poll() is None and pending:
        n = len(storage.get_all_trials(study_id, deepcopy=False))
        if n > pending[0]:
            rss[pending.pop(0)] = tree_rss_mib(proc.pid)
        time.sleep(0.2)
    proc.wait()
    return rss


if __name__ == "__main__":
    main()
