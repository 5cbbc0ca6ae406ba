"""The dashboard's study page at 1k, 10k and 100k trials: the time and size of the study's
API call (`GET /api/studies/<id>`, the page's one big request, polled with `?after=N`).

    python scripts/bench_dashboard.py                       # 1k/10k/100k, SQLite
    python scripts/bench_dashboard.py --sizes 1000 --max-trials 10000,0

Each size is one SQLite study of N finished trials built as `bench_scale.py` builds them
(bulk inserts into Optuna's tables). For every `--max-trials` value a real
`studyctl dashboard` process is started on it (0: all trials, as optuna-dashboard alone
serves them) and the study call is timed: first (cold: the server loads the trials) and
then `--reps` more within the server's cache, plus a poll with `after` at the end of the
list (what an open page sends every few seconds). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 900) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    return time.perf_counter() - start, body


def measure(url: str, max_trials: int, reps: int, work: Path) -> dict[str, Any]:
    port = _free_port()
    cmd = [sys.executable, "-m", "studyctl.cli", "dashboard", "-s", url, "--port", str(port)]
    cmd += ["--no-token", "--read-only", "--max-trials", str(max_trials)]
    proc = subprocess.Popen(
        cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                studies = json.loads(_get(f"{base}/api/studies", 5)[1])["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read() if proc.stdout else "") from None
                time.sleep(0.3)
        study_id = next(s["study_id"] for s in studies if s["study_name"] == bench_scale.STUDY)
        first, body = _get(f"{base}/api/studies/{study_id}?after=0")
        detail = json.loads(body)
        again = [_get(f"{base}/api/studies/{study_id}?after=0")[0] for _ in range(reps)]
        n = len(detail["trials"])
        poll, poll_body = _get(f"{base}/api/studies/{study_id}?after={n}")
        return {
            "first_s": round(first, 3),
            "cached_s": round(statistics.median(again), 3) if again else None,
            "poll_s": round(poll, 3),
            "poll_bytes": len(poll_body),
            "bytes": len(body),
            "trials_served": n,
            "first_trial": detail["trials"][0]["number"] if n else None,
        }
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        first_line = out.strip().splitlines()[:2]
        print(f"# dashboard --max-trials {max_trials}: {first_line}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--max-trials", default="10000,0", help="values to compare")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--db-dir", help="keep (and reuse) the built databases here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="studyctl-dash-") as tmp:
        work = Path(tmp)
        dbs = Path(args.db_dir) if args.db_dir else work
        for n in (int(s) for s in args.sizes.split(",")):
            path = dbs / f"dash{n}.db"
            url = f"sqlite:///{path}"
            if not path.exists():
                bench_scale.build_studies(url, n, str(work / "scale.toml"))
            for m in (int(v) for v in args.max_trials.split(",")):
                results[f"{n} trials, --max-trials {m}"] = measure(url, m, args.reps, work)
                print(json.dumps(results, indent=1), file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
