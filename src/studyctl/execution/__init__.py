"""Running a study: the orchestration above the trial loop, and the loop itself.

* `study_run`: `run_study`, what `studyctl run`/`resume` do, as a `RunOutcome`.
* `prepare`: check the objective and storage, create or load the study.
* `sequential`: the whole study in this process.
* `launcher`: `run --workers N`: N worker processes, GPU sets, display, signals.
* `worker`: `studyctl worker`: its row and heartbeat; recycles trial processes.
* `trial_process`: the child that trains up to `trials_per_process` trials.
* `trial_loop`: claim budget, one trial through `study.optimize`, record the outcome.
* `registration`: a worker's row in ``studyctl_workers`` with its heartbeat thread.
* `gpus`, `progress`: GPU sets, and per-trial progress lines.

Nothing here imports TensorFlow; the trial loop reaches it through `studyctl.training`.
"""
