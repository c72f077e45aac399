"""Image data sets: scikit-learn's digits, MNIST and Fashion-MNIST (IDX files), CIFAR-10 (binary version), and
sequential views of any of them for the recurrent models.

Images come as (N, H, W, C) float32, standardized per channel with training statistics; the MLP flattens them
itself. The parsers check every header and size and raise DataError naming the file, so a truncated or corrupt
download is reported, never half-read.
"""

from __future__ import annotations

import gzip
import math
import pathlib
import struct
import tarfile
import zlib

import numpy as np

from trainlab.data import download as dl
from trainlab.data.core import DataError, Dataset, check_fits_in_memory, hold_out, standardize

IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one the MNIST files use
CIFAR_RECORD = 1 + 32 * 32 * 3  # one label byte, then 1,024 red, 1,024 green, 1,024 blue bytes
CIFAR_MEMBERS = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)] + ["cifar-10-batches-bin/test_batch.bin"]


# --- parsers -------------------------------------------------------------------------------------------------
def parse_idx(raw: bytes, what: str, ndim: int) -> np.ndarray:
  """An IDX array of unsigned bytes (LeCun's format): 0, 0, type, ndim, then ndim big-endian sizes, then data."""
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != IDX_UBYTE or raw[3] != ndim:
    raise DataError(f"{what} is not an IDX file of unsigned bytes with {ndim} dimension(s) "
                    f"(its header starts {raw[:4].hex() or 'empty'}); delete it and run again")
  start = 4 + 4 * ndim
  if len(raw) < start:
    raise DataError(f"{what} is truncated inside its header; delete it and run again")
  dims = struct.unpack(f">{ndim}I", raw[4:start])
  if dims[0] == 0:  # caught here: NumPy's statistics of an empty split would warn before any message
    raise DataError(f"{what} holds no examples (its header says 0); delete it and run again")
  size = math.prod(dims)
  if len(raw) - start != size:
    raise DataError(f"{what}: its header promises {'x'.join(map(str, dims))} = {size} bytes of data, the file "
                    f"holds {len(raw) - start}: it is truncated or corrupt; delete it and run again")
  check_fits_in_memory(4 * size, what)
  return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def parse_cifar(raw: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 binary batch: records of a label byte and a 3x32x32 image (channel-major) -> (N,32,32,3), (N,)."""
  if len(raw) == 0 or len(raw) % CIFAR_RECORD:
    raise DataError(f"{what} holds {len(raw)} bytes, not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records: "
                    "it is truncated or corrupt; delete the archive and run again")
  records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
  labels = records[:, 0]
  if labels.max() > 9:
    raise DataError(f"{what} has the label {labels.max()}; CIFAR-10 labels are 0-9: the file is corrupt")
  return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # not gzip, truncated stream, bad CRC
    raise DataError(f"{path} is not a readable gzip file ({e}); delete it and run again") from None
  return parse_idx(raw, str(path), ndim)


def read_cifar(path: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
  """The six batches, read from the archive without extracting it (and without trusting its member paths)."""
  try:
    with tarfile.open(path, "r:gz") as tar:
      batches = []
      for name in CIFAR_MEMBERS:
        try:
          member = tar.getmember(name)
        except KeyError:
          raise DataError(f"{path} lacks {name}: it is not the CIFAR-10 binary archive") from None
        batches.append(parse_cifar(tar.extractfile(member).read(), f"{path}:{name}"))
      return batches
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f"{path} is not a readable .tar.gz archive ({e}); delete it and run again") from None


# --- loaders ---------------------------------------------------------------------------------------------------
def _images(x_train, y_train, x_test, y_test, val_fraction: float, split_seed: int, num_classes: int) -> Dataset:
  x_train, y_train, x_val, y_val = hold_out(x_train, y_train, val_fraction, split_seed)
  x_train, x_val, x_test = standardize(x_train, x_val, x_test)
  as_labels = lambda y: np.asarray(y, np.int32)
  return Dataset(x_train, as_labels(y_train), x_val, as_labels(y_val), x_test, as_labels(y_test), num_classes,
                 layout="image")


def digits(val_fraction: float, test_fraction: float, split_seed: int) -> Dataset:
  """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); a random test split."""
  from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

  bunch = load_digits()
  x, y = bunch.images[..., None].astype(np.float32), bunch.target
  x_train, y_train, x_test, y_test = hold_out(x, y, test_fraction, split_seed + 1)
  return _images(x_train, y_train, x_test, y_test, val_fraction, split_seed, 10)
digits.layout = "image"  # its examples' layout (LAYOUTS): models.check_input lists the data options by it


def _idx_images(name: str, root, download: bool, val_fraction: float, split_seed: int, url) -> Dataset:
  files = dl.fetch(name, root, download, url)
  x_train = read_idx(files["train-images-idx3-ubyte.gz"], 3)[..., None]
  y_train = read_idx(files["train-labels-idx1-ubyte.gz"], 1)
  x_test = read_idx(files["t10k-images-idx3-ubyte.gz"], 3)[..., None]
  y_test = read_idx(files["t10k-labels-idx1-ubyte.gz"], 1)
  for split, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
    if len(x) != len(y):
      raise DataError(f"data set {name}: {split} has {len(x)} images but {len(y)} labels; a file is corrupt")
    if y.max(initial=0) > 9:
      raise DataError(f"data set {name}: {split} has the label {y.max()}; labels are 0-9: a file is corrupt")
  return _images(x_train, y_train, x_test, y_test, val_fraction, split_seed, 10)


def mnist(root: str | None, download: bool, val_fraction: float, split_seed: int, url: str | None = None) -> Dataset:
  """MNIST: 60,000 training and 10,000 test 28x28 digits, from the four IDX files in <root>/mnist/."""
  return _idx_images("mnist", root, download, val_fraction, split_seed, url)
mnist.layout = "image"


def fashion_mnist(root: str | None, download: bool, val_fraction: float, split_seed: int,
                  url: str | None = None) -> Dataset:
  """Fashion-MNIST (Xiao et al. 2017): MNIST's format and sizes, pictures of clothes; <root>/fashion_mnist/."""
  return _idx_images("fashion_mnist", root, download, val_fraction, split_seed, url)
fashion_mnist.layout = "image"


def cifar10(root: str | None, download: bool, val_fraction: float, split_seed: int, url: str | None = None) -> Dataset:
  """CIFAR-10: 50,000 training and 10,000 test 32x32 colour images, from cifar-10-binary.tar.gz in <root>/cifar10/."""
  path = dl.fetch("cifar10", root, download, url)["cifar-10-binary.tar.gz"]
  batches = read_cifar(path)
  x_train = np.concatenate([x for x, _ in batches[:5]])
  y_train = np.concatenate([y for _, y in batches[:5]])
  x_test, y_test = batches[5]
  return _images(x_train, y_train, x_test, y_test, val_fraction, split_seed, 10)
cifar10.layout = "image"


IMAGE_LOADERS = {"digits": digits, "mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10}


def sequential(source: str, order: str, permute: bool, root: str | None, download: bool, val_fraction: float,
               test_fraction: float, split_seed: int) -> Dataset:
  """An image data set read as a sequence: pixel by pixel (T = H*W steps of C values) or row by row (T = H
  steps of W*C values). `permute` shuffles the pixel order once, the same for every image (permuted MNIST)."""
  if source == "digits":
    images = digits(val_fraction, test_fraction, split_seed)
  else:
    images = IMAGE_LOADERS[source](root, download, val_fraction, split_seed)
  n, h, w, c = images.x_train.shape
  shape = (h * w, c) if order == "pixel" else (h, w * c)
  order_of_pixels = np.random.default_rng(split_seed).permutation(h * w) if permute else None

  def view(x):
    if order_of_pixels is not None:
      x = x.reshape(len(x), h * w, c)[:, order_of_pixels]
    return x.reshape(len(x), *shape)

  return images._replace(x_train=view(images.x_train), x_val=view(images.x_val), x_test=view(images.x_test),
                         layout="sequence")
sequential.layout = "sequence"
