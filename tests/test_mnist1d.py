"""The embedded default data set: MNIST-1D from its published generator, cached after the first run."""

import numpy as np
import pytest

from trainlab import data


def test_mnist1d_splits_and_standardization(tmp_path):
  dataset = data.mnist1d(val_fraction=0.1, split_seed=0, cache_dir=str(tmp_path))
  assert dataset.x_train.shape == (3600, 40) and dataset.x_val.shape == (400, 40)
  assert dataset.x_test.shape == (1000, 40) and dataset.num_classes == 10
  assert sorted(np.unique(dataset.y_test)) == list(range(10))
  np.testing.assert_allclose(dataset.x_train.mean(0), 0, atol=1e-5)  # training statistics only
  np.testing.assert_allclose(dataset.x_train.std(0), 1, atol=1e-4)
  assert abs(dataset.x_test.mean()) > 1e-6  # the test split was not standardized with its own statistics


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
  first = data.mnist1d(val_fraction=0.1, split_seed=0, cache_dir=str(tmp_path))
  assert (tmp_path / "mnist1d.npz").is_file()
  import mnist1d.data

  monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: pytest.fail("generated twice"))
  second = data.mnist1d(val_fraction=0.1, split_seed=0, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(first.x_test, second.x_test)
  assert not list(tmp_path.glob("*.tmp")) and list(tmp_path.iterdir()) == [tmp_path / "mnist1d.npz"]


def test_matches_the_published_generator(tmp_path):
  from mnist1d.data import get_dataset_args, make_dataset

  reference = make_dataset(get_dataset_args())
  dataset = data.mnist1d(val_fraction=0.1, split_seed=0, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(dataset.y_test, reference["y_test"])
  train_and_val = np.concatenate([dataset.y_train, dataset.y_val])
  np.testing.assert_array_equal(np.sort(train_and_val), np.sort(reference["y"]))
