"""The defaults of tools/cost.py, apart from lib/analysis/cost.py (which loads torch) so that the tool's --help and
flag mistakes answer at once."""

DEFAULT_SIZES = (224, 112, 56)
DEFAULT_BATCH_SIZES = (1, 64)
# Classifier outputs of the measured models: CUB's 200 (the classifier is a small part of any of them).
DEFAULT_NUM_CLASSES = 200
# Untimed and timed forwards when --warmup / --repeats are not given: GPUs are cheap to repeat, CPUs are not.
DEFAULT_WARMUP = {"cuda": 5, "cpu": 1}
DEFAULT_REPEATS = {"cuda": 20, "cpu": 5}
