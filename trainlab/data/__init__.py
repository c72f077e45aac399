"""Data sets. Each option of the `data` config group names one loader here (`_target_: trainlab.data.NAME`),
and every loader returns a `Dataset`: the three splits as arrays, standardized with the training split's
statistics, with the layout and task that decide which models and loss can use them."""

from trainlab.data.analytic import analytic
from trainlab.data.core import (LAYOUTS, MAX_CLASSES, NPZ_ARRAYS, DataError, Dataset, mnist1d, npz,
                                resolve_cache_dir)
from trainlab.data.images import cifar10, digits, fashion_mnist, mnist, sequential
from trainlab.data.subsets import SUBSET_KEYS, cut, split_config
from trainlab.data.synthetic import adding, spirals, teacher

__all__ = ["DataError", "Dataset", "LAYOUTS", "MAX_CLASSES", "NPZ_ARRAYS", "adding", "analytic", "cifar10", "digits",
           "fashion_mnist", "mnist", "mnist1d", "npz", "resolve_cache_dir", "sequential", "spirals", "teacher",
           "SUBSET_KEYS", "cut", "split_config"]
