"""data.classes and data.n_train: the class subset with its labels renumbered, and a smaller training split."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import compose_config, run_cli
from trainlab import data, train



def test_classes_keep_those_examples_renumbered_in_the_order_listed(write_npz):
  path = write_npz()
  cut, full = (train.load_data(compose_config(["data=npz", f"data.path={path}", *extra]).data)
               for extra in (["data.classes=[2,0]"], []))
  assert cut.num_classes == 2 and full.num_classes == 3
  for split in ("train", "val", "test"):
    x, y = getattr(full, f"x_{split}"), getattr(full, f"y_{split}")
    keep = (y == 2) | (y == 0)
    np.testing.assert_array_equal(getattr(cut, f"x_{split}"), x[keep])  # same inputs, same standardization
    np.testing.assert_array_equal(getattr(cut, f"y_{split}"), np.where(y[keep] == 2, 0, 1))


def test_n_train_draws_that_many_with_the_data_seed_and_keeps_val_and_test():
  full = train.load_data(compose_config([]).data)
  a, b, c = (train.load_data(compose_config(["data.n_train=500", *extra]).data)
             for extra in ([], [], ["data.split_seed=1"]))
  assert len(a.y_train) == 500 and a.x_train.shape[1:] == full.x_train.shape[1:]
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.x_train, c.x_train)
  rows = {r.tobytes() for r in full.x_train}
  assert all(r.tobytes() in rows for r in a.x_train)  # drawn from the training split, no duplicates
  assert len({r.tobytes() for r in a.x_train}) == 500
  np.testing.assert_array_equal(a.x_test, full.x_test)


def test_classes_then_n_train_on_mnist1d():
  cut = train.load_data(compose_config(["data.classes=[5,6,7,8,9]", "data.n_train=100"]).data)
  assert cut.num_classes == 5 and len(cut.y_train) == 100
  assert set(np.unique(cut.y_test)) == {0, 1, 2, 3, 4}
  full = train.load_data(compose_config([]).data)
  assert len(cut.y_test) == int(np.isin(full.y_test, [5, 6, 7, 8, 9]).sum())


def test_generated_sets_take_n_train_themselves_and_classes_after():
  cut = train.load_data(compose_config(["data=spirals", "data.num_classes=3", "data.classes=[1,2]",
                                        "data.n_train=300"]).data)
  assert cut.num_classes == 2 and set(np.unique(cut.y_train)) == {0, 1}
  assert len(cut.y_train) < 300  # 300 generated, the class-0 third cut away


@pytest.mark.parametrize("overrides, message", [
    (["data.classes=[3,10]"], "data.classes=[3, 10] is not allowed: 10 is not a class"),
    (["data.classes=[3,3]"], "a class is repeated"),
    (["data.n_train=5000"], "data.n_train=5000 is not allowed: the training split has 3600 examples"),
    (["data=teacher", "data.task=regression", "data.classes=[0]"], "regression task"),
])
def test_bad_cuts_are_refused_in_one_line(overrides, message):
  with pytest.raises(data.DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
    train.load_data(compose_config(overrides).data)


def test_cli_refuses_n_train_below_one_in_one_line(tmp_path):
  proc = run_cli("train", "data.n_train=0", "steps=1", cwd=tmp_path, check=False)
  assert proc.returncode != 0
  assert "data.n_train=0 is not allowed: it must be >= 1" in proc.stderr
  assert "Traceback" not in proc.stderr
