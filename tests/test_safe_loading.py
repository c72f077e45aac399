"""The .npz parser under fuzzing: whatever bytes a user hands in, it returns a sound Dataset or raises our
DataError naming the file; it never crashes with another exception, never unpickles, never hangs.

A sound Dataset: int32 labels in [0, num_classes), finite float32 inputs of one example shape, no empty split.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trainlab import data

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True)
# dtypes a file may hold: the numeric ones, and ones a parser must refuse (complex, strings, dates, records).
DTYPES = st.sampled_from(["<f4", ">f8", "<f2", "<i1", "<u2", ">i4", "<i8", "<u8", "|b1", "<c8", "<U3", "|S2",
                          "<M8[s]", [("a", "<i4"), ("b", "<f4")]])


def valid_arrays(n_train: int = 40, n_test: int = 10, features: int = 3) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {"x_train": rng.normal(size=(n_train, features)).astype(np.float32), "y_train": rng.integers(0, 3, n_train),
          "x_test": rng.normal(size=(n_test, features)).astype(np.float32), "y_test": rng.integers(0, 3, n_test)}


def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
  buffer = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
  return buffer.getvalue()


def load(tmp_path: pathlib.Path, content: bytes, val_fraction: float = 0.2) -> data.Dataset | None:
  """Parses `content` as data.path; returns the Dataset, or None after checking the DataError it raised."""
  path = tmp_path / "fuzz.npz"
  path.write_bytes(content)
  try:
    dataset = data.npz(str(path), val_fraction, 0)
  except data.DataError as e:
    assert str(e).startswith(f"data file {path}"), str(e)
    assert "\n" not in str(e)
    return None
  assert_sound(dataset)
  return dataset


def assert_sound(d: data.Dataset) -> None:
  xs, ys = (d.x_train, d.x_val, d.x_test), (d.y_train, d.y_val, d.y_test)
  for x, y in zip(xs, ys):
    assert x.dtype == np.float32 and np.isfinite(x).all() and x.shape[1:] == d.x_train.shape[1:]
    assert y.dtype == np.int32 and y.ndim == 1 and len(y) == len(x) > 0
    assert 0 <= y.min() and y.max() < d.num_classes <= data.MAX_CLASSES


@FUZZ
@given(content=st.binary(max_size=2000))
def test_random_bytes(tmp_path, content):
  assert load(tmp_path, content) is None


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), compressed=st.booleans())
def test_truncated_file(tmp_path, cut, compressed):
  content = npz_bytes(valid_arrays(), compressed)
  assert load(tmp_path, content[:int(cut * len(content))]) is None


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
       compressed=st.booleans())
def test_corrupted_bytes(tmp_path, flips, compressed):
  content = bytearray(npz_bytes(valid_arrays(), compressed))
  for where, mask in flips:
    content[int(where * len(content))] ^= mask
  load(tmp_path, bytes(content))  # sound or DataError; a flip in the data itself may still parse


@FUZZ
@given(arrays=st.dictionaries(
    st.sampled_from(data.NPZ_ARRAYS + ("extra",)),
    hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)),
    max_size=7))
def test_wrong_arrays_shapes_and_dtypes(tmp_path, arrays):
  load(tmp_path, npz_bytes(arrays))


@FUZZ
@given(y=hnp.arrays(st.sampled_from(["<i8", "<u8", "<i2", "|b1"]), 40), x_scale=st.sampled_from([1.0, 1e30, np.inf]))
def test_labels_out_of_range_and_bad_values(tmp_path, y, x_scale):
  arrays = valid_arrays()
  arrays["y_train"], arrays["x_train"] = y, arrays["x_train"] * np.float32(x_scale)
  dataset = load(tmp_path, npz_bytes(arrays))
  if dataset is not None:
    assert y.min() >= 0 and y.max() < data.MAX_CLASSES and np.isfinite(x_scale)


@FUZZ
@given(descr=st.sampled_from(["<f4", "<i8", "|V0", "|b1", "<U1"]),
       shape=st.lists(st.sampled_from([0, 1, 3, 40, 10**6, 10**12]), max_size=3).map(tuple),
       payload=st.binary(max_size=64), fortran=st.booleans())
def test_malformed_npy_headers(tmp_path, descr, shape, payload, fortran):
  """A member whose header claims any shape (up to terabytes) over a few bytes of data."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": fortran, "shape": shape})
  content = io.BytesIO()
  with zipfile.ZipFile(content, "w") as archive:
    for name, array in valid_arrays().items():
      archive.writestr(f"{name}.npy", header.getvalue() + payload if name == "x_train" else npy(array))
  load(tmp_path, content.getvalue())


def npy(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array)
  return buffer.getvalue()


# --- cases the fuzzing must cover, stated once by hand -----------------------------------------------------------
def test_pickled_objects_are_never_loaded(tmp_path):
  class Boom:
    def __reduce__(self):
      return (pytest.fail, ("unpickled a user's file",))

  arrays = valid_arrays()
  arrays["x_train"] = np.array([Boom()] * 40, dtype=object)
  with pytest.raises(data.DataError, match="not a readable .npz archive"):
    data.npz(str(_write(tmp_path, npz_bytes(arrays))), 0.2, 0)
  with pytest.raises(data.DataError, match="not a readable .npz archive"):
    data.npz(str(_write(tmp_path, pickle.dumps(Boom()))), 0.2, 0)


def test_member_that_is_not_an_array(tmp_path):
  content = io.BytesIO()
  with zipfile.ZipFile(content, "w") as archive:
    for name, array in valid_arrays().items():
      if name == "y_train":  # a member without the .npy name and header: numpy hands back its raw bytes
        archive.writestr(name, b"3,1,2")
      else:
        archive.writestr(f"{name}.npy", npy(array))
  with pytest.raises(data.DataError, match="y_train is not a .npy array"):
    data.npz(str(_write(tmp_path, content.getvalue())), 0.2, 0)


@pytest.mark.parametrize("change, message", [
    ({"y_train": np.full(40, -1)}, "y_train has the label -1"),
    ({"y_test": np.full(10, 2**40)}, f"y_test has the label {2**40}"),
    ({"y_train": np.zeros(40, np.float32)}, "labels must be integer classes"),
    ({"x_test": np.zeros((10, 3), np.complex64)}, "x_test has dtype complex64; it must be real numbers"),
    ({"x_train": np.full((40, 3), np.nan, np.float32)}, "x_train holds NaN or infinite values"),
    ({"x_test": np.zeros((0, 3)), "y_test": np.zeros(0, int)}, "x_test is empty"),
])
def test_each_bad_value_is_named(tmp_path, change, message):
  with pytest.raises(data.DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
    data.npz(str(_write(tmp_path, npz_bytes({**valid_arrays(), **change}))), 0.2, 0)


def test_hold_out_that_empties_a_split(tmp_path):
  path = _write(tmp_path, npz_bytes(valid_arrays()))
  with pytest.raises(data.DataError, match=r"data.val_fraction=0.0 of its 40 training examples leaves the "
                                           "validation split empty"):
    data.npz(str(path), 0.0, 0)


def test_valid_file_parses(tmp_path):
  dataset = load(tmp_path, npz_bytes(valid_arrays()))
  assert dataset is not None and (len(dataset.y_train), len(dataset.y_val), len(dataset.y_test)) == (32, 8, 10)


def _write(tmp_path: pathlib.Path, content: bytes) -> pathlib.Path:
  path = tmp_path / "case.npz"
  path.write_bytes(content)
  return path
