"""Small real data sets shipped inside the package."""
from __future__ import annotations

import csv
from importlib import resources

import numpy as np

from jaxem.datasets.geyser import load_geyser  # noqa: F401


def load_faithful() -> np.ndarray:
    """Old Faithful eruptions (R's ``datasets::faithful``): ``(272, 2)`` float32.

    Columns: eruption duration (minutes), waiting time to the next eruption (minutes).
    """
    with resources.files(__name__).joinpath("faithful.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    return np.asarray(rows, dtype=np.float32)
