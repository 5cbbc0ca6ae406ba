"""The GPU check: studyctl's JAX backend on a real NVIDIA GPU, with the figures it reports.

Meant for a machine with an NVIDIA GPU, JAX (CUDA) and scikit-learn but no TensorFlow and
no package index (the project's lent GPU machine). studyctl's pure-Python pieces come from
wheels carried in (`bash scripts/gpu_wheels.sh` builds the folder; about 20 MB):

    python3 scripts/gpu_check.py --wheels gpu-wheels --out RESULTS_DIR

It unpacks them into a folder first on PYTHONPATH (the machine's own packages stay
visible), then runs and reports:

1. a JAX-backend study of the CNN example (objectives/digits_cnn.py) on GPU 0;
2. two workers sharing that one GPU (`studyctl worker STUDY --gpus 0`, twice), with the
   peak GPU memory of each trial process (XLA's preallocation is off, so neither takes 75 %
   of the GPU) and whether any trial ran out of memory;
3. the same study as (1) on this machine's CPU (JAX_PLATFORMS=cpu): per-trial time, GPU
   against CPU;
4. the `backend`, `replicas`, `devices` and `worker` attributes recorded on the trials.

It writes RESULTS_DIR/gpu_check.json and prints a summary. Where there is no GPU it prints
"no GPU: skipped" and exits 0; `--rehearse-on-cpu` runs the same steps on the CPU (memory
figures then absent), which is how the script is tested before it meets a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_MARK = "STUDYCTL_GPU_CHECK_VENV"


def gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.startswith("GPU")]


def ensure_studyctl(wheels: Path | None, work: Path) -> None:
    """Unless studyctl already imports here, unpack the carried wheels into a folder put
    first on PYTHONPATH (the machine's own packages, JAX among them, stay visible whatever
    environment its python3 is) and run this script again with it."""
    if os.environ.get(VENV_MARK):
        return
    try:
        import keras  # noqa: F401
        import optuna  # noqa: F401

        import studyctl  # noqa: F401

        return
    except ImportError:
        if wheels is None:
            sys.exit("studyctl is not installed here: pass --wheels DIR (scripts/gpu_wheels.sh)")
    site = work / "site"
    found = sorted(str(p) for p in wheels.glob("*.whl"))
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"),
            *("--target", str(site)),
            *found,
        ],
        check=True,
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, VENV_MARK: "1", "PYTHONPATH": path}
    sys.exit(subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode)


def write_study(work: Path, name: str, n_trials: int, epochs: int) -> Path:
    objectives = work / "objectives"
    objectives.mkdir(exist_ok=True)
    for f in ("digits_cnn.py", "_digits_data.py"):
        shutil.copy(REPO / "objectives" / f, objectives / f)
    spec = work / f"{name}.toml"
    spec.write_text(
        f'name = "{name}"\nobjective = "digits_cnn"\ndirection = "maximize"\n'
        f'metric = "val_accuracy"\nn_trials = {n_trials}\n'
        '[sampler]\ntype = "random"\nseed = 7\n'
        f'[training]\nbackend = "jax"\nepochs = {epochs}\nbatch_size = 64\n'
        "[worker]\nheartbeat_interval = 2\ngrace_period = 10\n"
        f'[artifacts]\npath = "{work / "artifacts"}"\nkeep_best_model = false\n'
    )
    return spec


def studyctl(args: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studyctl.cli", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def trial_figures(storage: str, name: str) -> dict[str, Any]:
    import optuna

    try:
        trials = optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:  # the study was never created: the command's stderr says why
        return {"trials": 0, "complete": 0, "failed": [], "trial_seconds_median": None}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    durations = [float(t.user_attrs.get("duration_s", 0.0)) for t in complete]
    return {
        "trials": len(trials),
        "complete": len(complete),
        "failed": [t.user_attrs.get("fail_reason") for t in trials if t.state.name == "FAIL"],
        # The first trial of a process compiles XLA kernels; the median is the steady pace.
        "trial_seconds_median": statistics.median(durations) if durations else None,
        "trial_seconds": durations,
        "best_value": max((t.value for t in complete if t.value is not None), default=None),
        "attributes": [
            {
                "number": t.number,
                "backend": t.user_attrs.get("backend"),
                "replicas": t.user_attrs.get("replicas"),
                "devices": t.user_attrs.get("devices"),
                "worker": t.user_attrs.get("worker"),
            }
            for t in trials
        ],
    }


class GpuMemory:
    """Samples nvidia-smi's per-process GPU memory; keeps each PID's peak (MiB)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
        while not self._stop.wait(0.5):
            out = subprocess.run(query, capture_output=True, text=True, check=False).stdout
            for line in out.splitlines():
                pid, _, mem = line.partition(",")
                try:
                    mib = int(mem.strip().split()[0])
                    self.peak[int(pid)] = max(self.peak.get(int(pid), 0), mib)
                except (ValueError, IndexError):
                    continue

    def __enter__(self) -> GpuMemory:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rehearse-on-cpu", action="store_true")
    args = parser.parse_args()
    found = gpus()
    args.out.mkdir(parents=True, exist_ok=True)
    result_file = args.out / "gpu_check.json"
    if not found and not args.rehearse_on_cpu:
        print("no GPU: skipped")
        return 0
    work = Path(tempfile.mkdtemp(prefix="studyctl-gpu-check-"))
    ensure_studyctl(args.wheels, work)
    on_gpu = bool(found) and not args.rehearse_on_cpu
    base = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS")}
    base["TF_CPP_MIN_LOG_LEVEL"] = "3"
    gpu_env = {**base, "CUDA_VISIBLE_DEVICES": "0"}
    cpu_env = {**base, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    if not on_gpu:
        gpu_env = dict(cpu_env)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": found[0] if on_gpu else "none (rehearsal on the CPU)",
        "rehearsal": not on_gpu,
        "python": sys.version.split()[0],
    }
    try:
        import jax

        report["jax"] = jax.__version__
        report["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as exc:  # reported, not fatal: the studies below say more
        report["jax"] = f"not importable: {exc}"
    storage = f"sqlite:///{work / 'gpu_check.db'}"

    # 1. one JAX worker on GPU 0 (sequential run)
    spec = write_study(work, "cnn-gpu", args.trials, args.epochs)
    started = time.monotonic()
    out = studyctl(["run", str(spec), "-s", storage, "-q"], work, gpu_env)
    report["gpu_study"] = {
        "exit_code": out.returncode,
        "wall_seconds": round(time.monotonic() - started, 1),
        **trial_figures(storage, "cnn-gpu"),
    }
    if out.returncode:
        report["gpu_study"]["stderr_tail"] = out.stderr[-2000:]
        print(out.stderr[-2000:], file=sys.stderr)

    # 2. two workers sharing GPU 0
    spec2 = write_study(work, "cnn-shared", args.trials, args.epochs)
    created = studyctl(["create", str(spec2), "-s", storage], work, gpu_env)
    if created.returncode:
        print(created.stderr[-2000:], file=sys.stderr)
    with GpuMemory() as memory:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "studyctl.cli", "worker", "cnn-shared", "-s", storage]
                + (["--gpus", "0"] if on_gpu else [])
                + ["-q"],
                cwd=work,
                env=gpu_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        codes = [p.wait(timeout=1800) for p in procs]
    shared = trial_figures(storage, "cnn-shared")
    trial_pids = {a["worker"]["pid"] for a in shared["attributes"] if a.get("worker")}
    report["shared_gpu"] = {
        "worker_exit_codes": codes,
        "out_of_memory": [r for r in shared["failed"] if r and "out of memory" in r],
        "peak_gpu_mib_per_trial_process": {
            str(pid): mib for pid, mib in memory.peak.items() if pid in trial_pids
        },
        **shared,
    }

    # 3. the same study as (1) on the CPU
    spec3 = write_study(work, "cnn-cpu", args.trials, args.epochs)
    out = studyctl(["run", str(spec3), "-s", storage, "-q"], work, cpu_env)
    report["cpu_study"] = {"exit_code": out.returncode, **trial_figures(storage, "cnn-cpu")}
    gpu_median = report["gpu_study"]["trial_seconds_median"]
    cpu_median = report["cpu_study"]["trial_seconds_median"]
    if gpu_median and cpu_median:
        report["cpu_over_gpu_trial_time"] = round(cpu_median / gpu_median, 2)

    result_file.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}, indent=2))
    for part in ("gpu_study", "shared_gpu", "cpu_study"):
        fig = report[part]
        print(
            f"{part}: {fig['complete']}/{fig['trials']} complete, median trial "
            f"{fig['trial_seconds_median']} s, failed {fig['failed']}"
        )
    print(
        f"peak GPU MiB per trial process: {report['shared_gpu']['peak_gpu_mib_per_trial_process']}"
    )
    print(f"wrote {result_file}")
    ok = (
        report["gpu_study"]["exit_code"] == 0
        and codes == [0, 0]
        and not report["shared_gpu"]["out_of_memory"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
