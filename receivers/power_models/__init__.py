"""Power models of the ``estimator`` receiver: features, the SPECpower curve, regression files.

- :mod:`.features`: the per-tick features (names carry their units) that recording,
  training and prediction share.
- :mod:`.curve`: power at SPECpower_ssj2008's 11 load levels, the shipped table of
  published results (``specpower.csv``) and /proc/cpuinfo matching.
- :mod:`.regression`: the JSON model file, its validation and prediction.
"""

from .curve import SpecResult, interpolate, load_table
from .features import FEATURES, TARGETS, FeatureReader, Missing
from .regression import ModelFileError, PowerModel

__all__ = [
    "FEATURES",
    "TARGETS",
    "FeatureReader",
    "Missing",
    "ModelFileError",
    "PowerModel",
    "SpecResult",
    "interpolate",
    "load_table",
]
