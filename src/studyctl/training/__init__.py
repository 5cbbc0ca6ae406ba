"""The Keras side: the only package that imports TensorFlow, and only when a trial trains.

* `devices`: GPU memory growth, threads, logical CPUs; the one strategy per process.
* `callbacks`: epoch reports (pruning, NaN, missing metric), per-epoch checkpoints, mirror.
* `checkpoints`: a trial's checkpoint folder, fetched from or removed in the object store.
* `models`: keeping the best trial's trained model.
* `logs`: the dashboard note, TensorBoard logs and HParams.
* `trial`: `run_keras_trial`, which puts these together for one trial.
"""
