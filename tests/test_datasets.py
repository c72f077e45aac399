"""Data sets: each loader parses files in its own format that the test writes; downloads from a local server
(checksum, cut-off transfer, no network); fuzzed parsers fail with DataError; the generated tasks' formulas."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import socket
import struct
import tarfile
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import train_in_process
from trainlab import data
from trainlab.data import images, synthetic, download

MNIST_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz"]


# --- writers of the real formats -----------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
  """LeCun's IDX format: 0, 0, 0x08 (unsigned byte), ndim, big-endian sizes, the bytes."""
  return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=30, n_test=10, seed=0) -> dict:
  """Four gzipped IDX files of random 28x28 images; returns the arrays written."""
  rng = np.random.default_rng(seed)
  arrays = {
      "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
      "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
      "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
      "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
  }
  folder.mkdir(parents=True, exist_ok=True)
  for name, array in arrays.items():
    (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
  return arrays


def cifar_bytes(images_hwc: np.ndarray, labels: np.ndarray) -> bytes:
  """CIFAR-10 binary records: label byte, then the red, green and blue planes (row-major)."""
  planes = images_hwc.transpose(0, 3, 1, 2).reshape(len(labels), -1)
  return np.concatenate([labels[:, None], planes], axis=1).astype(np.uint8).tobytes()


def write_cifar(path, per_batch=4, seed=0) -> list:
  rng = np.random.default_rng(seed)
  batches = []
  with tarfile.open(path, "w:gz") as tar:
    for member in images.CIFAR_MEMBERS:
      x, y = rng.integers(0, 256, (per_batch, 32, 32, 3)), rng.integers(0, 10, per_batch)
      raw = cifar_bytes(x, y)
      info = tarfile.TarInfo(member)
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
      batches.append((x, y))
  return batches


def md5(path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def serve(folder, cut_off: bool = False):
  """An HTTP server on 127.0.0.1 serving `folder`; cut_off promises more bytes than it sends, then hangs up."""

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(folder), **kwargs)

    def log_message(self, *args):
      pass

    def do_GET(self):
      if not cut_off:
        return super().do_GET()
      body = (folder / self.path.lstrip("/")).read_bytes()
      self.send_response(200)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body[:len(body) // 2])
      self.close_connection = True

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}/"
  finally:
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/"  # nothing listens there: connection refused, as without a network


# --- loaders on files in their own format ------------------------------------------------------------------------
def test_mnist_loader_parses_idx_files_and_standardizes(tmp_path):
  written = write_mnist(tmp_path / "mnist", n_train=40, n_test=10)
  ds = images.mnist(str(tmp_path), download=False, val_fraction=0.25, split_seed=0)
  assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_val.shape == (10, 28, 28, 1)
  assert ds.x_test.shape == (10, 28, 28, 1)
  assert (ds.num_classes, ds.task, ds.layout) == (10, "classification", "image")
  np.testing.assert_array_equal(ds.y_test, written["t10k-labels-idx1-ubyte.gz"])
  np.testing.assert_array_equal(np.sort(np.concatenate([ds.y_train, ds.y_val])),
                                np.sort(written["train-labels-idx1-ubyte.gz"]))
  # Standardized with training statistics: the test images are an affine map of the raw bytes.
  raw = written["t10k-images-idx3-ubyte.gz"].astype(np.float64).ravel()
  slope, intercept = np.polyfit(raw, ds.x_test.ravel(), 1)
  np.testing.assert_allclose(slope * raw + intercept, ds.x_test.ravel(), atol=1e-4)
  assert abs(ds.x_train.mean()) < 1e-4 and abs(ds.x_train.std() - 1) < 1e-4


def test_cifar_loader_reads_the_binary_archive_channel_major(tmp_path):
  folder = tmp_path / "cifar10"
  folder.mkdir()
  batches = write_cifar(folder / "cifar-10-binary.tar.gz")
  read = images.read_cifar(folder / "cifar-10-binary.tar.gz")
  for (x, y), (x_read, y_read) in zip(batches, read):
    np.testing.assert_array_equal(x_read, x)  # (N, 32, 32, 3): the planes became channels
    np.testing.assert_array_equal(y_read, y)
  ds = images.cifar10(str(tmp_path), download=False, val_fraction=0.1, split_seed=0)
  assert ds.x_train.shape == (18, 32, 32, 3) and ds.x_val.shape == (2, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(ds.y_test, batches[5][1])
  np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-4)  # per channel


def test_cifar_record_layout_by_hand():
  raw = bytes([7]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
  x, y = images.parse_cifar(raw, "record")
  assert y.tolist() == [7]
  assert x.shape == (1, 32, 32, 3) and x[0, 5, 9].tolist() == [10, 20, 30]


def test_digits_is_bundled_and_split_three_ways():
  ds = images.digits(val_fraction=0.1, test_fraction=0.2, split_seed=0)
  sizes = [len(ds.y_train), len(ds.y_val), len(ds.y_test)]
  assert sum(sizes) == 1797 and sizes[2] == 359  # round(0.2 * 1797)
  assert ds.x_train.shape[1:] == (8, 8, 1) and ds.layout == "image" and ds.num_classes == 10


@pytest.mark.parametrize("order,shape", [("pixel", (64, 1)), ("row", (8, 8))])
def test_sequential_views_of_digits(order, shape):
  img = images.digits(0.1, 0.2, 0)
  seq = images.sequential("digits", order, False, None, False, 0.1, 0.2, 0)
  assert seq.x_train.shape[1:] == shape and seq.layout == "sequence"
  np.testing.assert_array_equal(seq.x_train.reshape(img.x_train.shape), img.x_train)  # same pixels, in order
  np.testing.assert_array_equal(seq.y_test, img.y_test)


def test_permuted_pixels_use_one_fixed_order():
  img = images.digits(0.1, 0.2, 0)
  seq = images.sequential("digits", "pixel", True, None, False, 0.1, 0.2, 0)
  perm = np.random.default_rng(0).permutation(64)
  np.testing.assert_array_equal(seq.x_test[:, :, 0], img.x_test.reshape(-1, 64)[:, perm])


# --- downloads ---------------------------------------------------------------------------------------------------
@pytest.fixture
def served_mnist(tmp_path, monkeypatch):
  """MNIST-format files written by the test, their MD5s put in place of the published ones."""
  source = tmp_path / "server"
  written = write_mnist(source)
  monkeypatch.setitem(download.SOURCES, "mnist", download.Source("unused", {f: md5(source / f) for f in MNIST_FILES}))
  return source, written


def leftovers(folder) -> list[str]:
  return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_download_fetches_checks_and_caches(served_mnist, tmp_path):
  source, written = served_mnist
  root = tmp_path / "root"
  with serve(source) as url:
    ds = images.mnist(str(root), download=True, val_fraction=0.1, split_seed=0, url=url)
  assert leftovers(root / "mnist") == sorted(MNIST_FILES)
  np.testing.assert_array_equal(ds.y_test, written["t10k-labels-idx1-ubyte.gz"])
  # The second time the cache is enough: no server, no network.
  again = images.mnist(str(root), download=True, val_fraction=0.1, split_seed=0, url=closed_port_url())
  np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_checksum_failure_is_reported_and_leaves_nothing(served_mnist, tmp_path, monkeypatch):
  source, _ = served_mnist
  bad = dict(download.SOURCES["mnist"].md5, **{"train-images-idx3-ubyte.gz": "0" * 32})
  monkeypatch.setitem(download.SOURCES, "mnist", download.Source("unused", bad))
  root = tmp_path / "root"
  with serve(source) as url, pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz is corrupt: its MD5 is"):
    images.mnist(str(root), download=True, val_fraction=0.1, split_seed=0, url=url)
  assert "train-images-idx3-ubyte.gz" not in leftovers(root)
  assert not [name for name in leftovers(root) if name.endswith(".part")]


def test_cut_off_download_leaves_no_partial_file(served_mnist, tmp_path):
  source, _ = served_mnist
  root = tmp_path / "root"
  with serve(source, cut_off=True) as url, pytest.raises(data.DataError, match="downloading .* failed"):
    images.mnist(str(root), download=True, val_fraction=0.1, split_seed=0, url=url)
  assert leftovers(root / "mnist") == []


@pytest.mark.parametrize("name,loader,files", [
    ("mnist", images.mnist, MNIST_FILES), ("fashion_mnist", images.fashion_mnist, MNIST_FILES),
    ("cifar10", images.cifar10, ["cifar-10-binary.tar.gz"])])
def test_missing_files_without_network_give_one_message_naming_files_and_folder(name, loader, files, tmp_path):
  with pytest.raises(data.DataError) as e:
    loader(str(tmp_path), download=True, val_fraction=0.1, split_seed=0, url=closed_port_url())
  message = str(e.value)
  assert "\n" not in message
  assert f"put the file(s) {', '.join(files)}" in message and f"into {tmp_path / name}/" in message
  assert leftovers(tmp_path / name) == []
  with pytest.raises(data.DataError, match=f"data set {name}: download=false; put the file"):
    loader(str(tmp_path), download=False, val_fraction=0.1, split_seed=0)


def test_truncated_or_corrupt_files_are_named(tmp_path):
  folder = tmp_path / "mnist"
  write_mnist(folder)
  labels = folder / "train-labels-idx1-ubyte.gz"
  good = labels.read_bytes()
  labels.write_bytes(good[: len(good) // 2])  # a cut-off gzip stream
  with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz is not a readable gzip file"):
    images.mnist(str(tmp_path), download=False, val_fraction=0.1, split_seed=0)
  raw = gzip.decompress(good)
  labels.write_bytes(gzip.compress(raw[:-3]))  # a valid gzip of a truncated IDX file
  with pytest.raises(data.DataError, match="header promises 30 = 30 bytes of data, the file holds 27"):
    images.mnist(str(tmp_path), download=False, val_fraction=0.1, split_seed=0)
  (tmp_path / "cifar10").mkdir()
  (tmp_path / "cifar10" / "cifar-10-binary.tar.gz").write_bytes(b"not a tar file")
  with pytest.raises(data.DataError, match="cifar-10-binary.tar.gz is not a readable .tar.gz archive"):
    images.cifar10(str(tmp_path), download=False, val_fraction=0.1, split_seed=0)


def test_an_idx_file_of_no_examples_is_one_message_without_numpy_warnings(tmp_path, recwarn):
  with pytest.raises(data.DataError, match=r"^empty\.idx holds no examples \(its header says 0\)"):
    images.parse_idx(idx_bytes(np.zeros((0, 28, 28), np.uint8)), "empty.idx", 3)
  assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


# --- fuzzing the parsers: any bytes give an array or our DataError, never another exception ------------------------
@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), ndim=st.integers(1, 3))
def test_idx_parser_fuzz(raw, ndim):
  try:
    array = images.parse_idx(raw, "fuzz", ndim)
  except data.DataError:
    return
  assert array.ndim == ndim and array.size == len(raw) - 4 - 4 * ndim


@settings(max_examples=200, deadline=None)
@given(dims=st.lists(st.integers(0, 5), min_size=1, max_size=3), cut=st.integers(0, 200), flip=st.integers(0, 300))
def test_idx_parser_fuzz_of_damaged_valid_files(dims, cut, flip):
  raw = bytearray(idx_bytes(np.zeros(dims, np.uint8)))
  if flip < len(raw):
    raw[flip] ^= 0xFF
  raw = bytes(raw[:len(raw) - cut % (len(raw) + 1)])
  try:
    images.parse_idx(raw, "fuzz", len(dims))
  except data.DataError:
    pass


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=8000), st.integers(0, 4).map(lambda n: bytes(images.CIFAR_RECORD * n))),
       label=st.integers(0, 255))
def test_cifar_parser_fuzz(raw, label):
  raw = bytes([label]) + raw[1:] if raw else raw
  try:
    x, y = images.parse_cifar(raw, "fuzz")
  except data.DataError:
    return
  assert x.shape == (len(raw) // images.CIFAR_RECORD, 32, 32, 3) and y.max() <= 9


# --- memory ------------------------------------------------------------------------------------------------------
def test_data_larger_than_memory_is_refused_naming_the_limit(tmp_path, monkeypatch, write_npz):
  write_mnist(tmp_path / "mnist")
  npz_path = write_npz()
  monkeypatch.setattr(data.core, "available_memory", lambda: 2 * 1000)  # a limit of 1,000 bytes
  # The header promises 30 images of 28x28 bytes, 4 bytes each as float32; nothing is read past the header.
  with pytest.raises(data.DataError, match=r"needs 94,080 bytes \(0\.00 GiB\) in memory, more than the limit of "
                     r"1,000 bytes \(0\.00 GiB\) \(half the memory available now\)"):
    images.mnist(str(tmp_path), download=False, val_fraction=0.1, split_seed=0)
  with pytest.raises(data.DataError, match="more than the limit"):
    data.npz(str(npz_path), 0.1, 0)
  with pytest.raises(data.DataError, match="data set adding needs"):
    synthetic.adding(1000, 1000, 10, 10, 0)


# --- generated tasks ---------------------------------------------------------------------------------------------
def test_adding_problem_formula_and_trivial_baseline():
  ds = synthetic.adding(length=30, n_train=20_000, n_val=10, n_test=10, seed=0)
  x, y = ds.x_train, ds.y_train
  assert x.shape == (20_000, 30, 2) and y.shape == (20_000, 1)
  assert (ds.task, ds.layout, ds.num_classes) == ("regression", "sequence", 1)
  markers = x[:, :, 1]
  assert np.all(markers.sum(axis=1) == 2)
  assert np.all(markers[:, :15].sum(axis=1) == 1)  # one marker in each half
  np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
  # Always predicting 1: E[(U1 + U2 - 1)^2] = Var(U1 + U2) = 2/12; the standard error here is about 0.0014.
  assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.006


def test_spirals_follow_their_formula():
  ds = synthetic.spirals(n_train=400, n_val=10, n_test=10, num_classes=3, turns=1.0, noise=0.0, seed=0)
  x, y = ds.x_train, ds.y_train
  r = np.hypot(x[:, 0], x[:, 1])
  angle = 2 * np.pi * (r + y / 3)  # turns = 1
  np.testing.assert_allclose(np.stack([r * np.cos(angle), r * np.sin(angle)], 1), x, atol=1e-5)
  assert set(np.unique(y)) == {0, 1, 2} and ds.layout == "vector"
  again = synthetic.spirals(400, 10, 10, 3, 1.0, 0.0, 0)
  np.testing.assert_array_equal(again.x_train, x)


def test_teacher_tasks():
  reg = synthetic.teacher("regression", 4000, 100, 100, input_dim=8, widths=[16], outputs=2, noise=0.5, seed=0)
  assert reg.y_train.shape == (4000, 2) and reg.task == "regression" and reg.num_classes == 2
  np.testing.assert_allclose(reg.y_train.var(axis=0), 1 + 0.5 ** 2, rtol=0.1)  # unit-variance signal + noise
  cls = synthetic.teacher("classification", 4000, 100, 100, input_dim=8, widths=[], outputs=3, noise=0.0, seed=0)
  assert cls.task == "classification" and set(np.unique(cls.y_train)) == {0, 1, 2}
  # A linear teacher without noise: the labels are the arg-max of a linear map, so a linear fit separates them.
  w, *_ = np.linalg.lstsq(cls.x_train, np.eye(3)[cls.y_train], rcond=None)
  assert np.mean(np.argmax(cls.x_train @ w, 1) == cls.y_train) > 0.9


# --- regression through the training loop --------------------------------------------------------------------------
def test_regression_trains_with_mse_and_tracks_the_lowest_validation_mse(tmp_path):
  summary = train_in_process(["data=adding", "data.length=10", "data.n_train=512", "data.n_val=200", "data.n_test=200",
                              "model=gru", "model.hidden=16", "steps=150", "eval_every=50", "batch_size=64",
                              "optimizer.lr=0.01"], tmp_path)
  assert "test/accuracy" not in summary and "best_val/accuracy" not in summary
  points = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  val = [(p["step"], p["val/mse"]) for p in points if "val/mse" in p]
  assert len(val) == 3
  for p in points:  # the loss of a regression is the MSE itself
    if "val/mse" in p:
      assert p["val/loss"] == pytest.approx(p["val/mse"])
  best_step, best_mse = min(val, key=lambda sv: sv[1])
  assert summary["best_val/mse"] == pytest.approx(best_mse) and summary["best_val/step"] == best_step
  assert summary["test/mse"] == pytest.approx(summary["test/loss"])
  assert summary["test/mse"] < 1 / 6  # beats always predicting the mean


@pytest.mark.parametrize("option,files", [("mnist", MNIST_FILES), ("fashion_mnist", MNIST_FILES),
                                          ("cifar10", ["cifar-10-binary.tar.gz"])])
def test_image_options_compose_and_stop_with_one_line_when_files_are_missing(option, files, tmp_path):
  """The real config: the data option's YAML, its schema, the loader, and the error as train_and_evaluate raises it."""
  with pytest.raises(data.DataError) as e:
    train_in_process([f"data={option}", f"data.root={tmp_path}", "data.download=false", "steps=2"], tmp_path / "run")
  assert str(e.value).startswith(f"data set {option}: download=false; put the file(s) {files[0]}")
  assert "\n" not in str(e.value)


def test_npz_layout_is_inferred_from_rank_or_given(write_npz):
  rng = np.random.default_rng(0)
  seq = write_npz("seq.npz", x_train=rng.normal(size=(200, 5, 3)), x_test=rng.normal(size=(50, 5, 3)))
  assert data.npz(str(seq), 0.1, 0).layout == "sequence"
  assert data.npz(str(write_npz()), 0.1, 0).layout == "vector"
  assert data.npz(str(write_npz()), 0.1, 0, layout="sequence").layout == "sequence"
  assert data.mnist1d(0.1, 0).layout == "sequence"  # MNIST-1D is a 1-D signal: cnn and rnn may read it
