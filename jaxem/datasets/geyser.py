"""Old Faithful geyser series (R's ``MASS::geyser``), in time order."""
from __future__ import annotations

import csv
from importlib import resources

import numpy as np


def load_geyser() -> np.ndarray:
    """Old Faithful, 1-15 August 1985 (Azzalini and Bowman, 1990): ``(299, 2)`` float32.

    Columns: waiting time before the eruption (minutes), eruption duration (minutes).
    Rows are consecutive eruptions, so it is one sequence for a hidden Markov model.
    Some nocturnal durations were recorded only as 2, 3 or 4 minutes.

    >>> load_geyser().shape
    (299, 2)
    """
    with resources.files("jaxem.datasets").joinpath("geyser.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    return np.asarray(rows, dtype=np.float32)
