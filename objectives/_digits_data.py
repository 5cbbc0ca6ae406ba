"""scikit-learn's digits (1,797 8x8 images, shipped inside scikit-learn: no download)."""

from __future__ import annotations

from typing import Any

from studyctl import TrainingData


def load_digits_split(options: dict[str, Any], *, images: bool = False) -> TrainingData:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images if images else digits.data).astype("float32") / 16.0
    if images:
        x = x[..., np.newaxis]
    y = digits.target.astype("int32")
    x_train, x_val, y_train, y_val = train_test_split(
        x,
        y,
        test_size=float(options.get("val_fraction", 0.2)),
        random_state=int(options.get("split_seed", 0)),
        stratify=y,
    )
    return TrainingData(x=x_train, y=y_train, x_val=x_val, y_val=y_val)
