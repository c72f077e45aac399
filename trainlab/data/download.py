"""Files of the public data sets: found in `data.root`, else downloaded once and checked against their MD5.

A download goes to a temporary file beside its target and is renamed only after its checksum matches, so the
cache never holds part of a file. Without a network (or with `download=false`) the error names every missing
file, where to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.request
from typing import NamedTuple

from trainlab.data.core import DataError
from trainlab.rundir import atomic

TIMEOUT_S = 30.0  # per network operation: a dead mirror fails the run instead of hanging it


class Source(NamedTuple):
  """Where a data set's files come from: `url` + file name, each with its published MD5."""
  url: str
  md5: dict[str, str]


SOURCES = {
    "mnist": Source("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion_mnist": Source("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    # The binary version only: the Python version is pickled, and unpickling runs code.
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/", {
        "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    }),
}


def resolve_root(root: str | None) -> pathlib.Path:
  """data.root, else $TRAINLAB_DATA, else ~/.cache/trainlab/data."""
  path = root or os.environ.get("TRAINLAB_DATA") or pathlib.Path.home() / ".cache" / "trainlab" / "data"
  return pathlib.Path(path).expanduser()


def fetch(name: str, root: str | None, download: bool, url: str | None = None) -> dict[str, pathlib.Path]:
  """The paths of data set `name`'s files in `<root>/<name>/`, downloading those that are missing.

  Args:
    name: a key of SOURCES.
    root: the data folder (data.root); None for the default.
    download: whether missing files may be fetched from the network.
    url: a mirror to use instead of the usual location (the file names are appended).

  Raises:
    DataError: a file is missing and cannot be downloaded, or a download's checksum is wrong.
  """
  source = SOURCES[name]
  base = url or source.url
  folder = resolve_root(root) / name
  paths = {file: folder / file for file in source.md5}
  missing = [file for file, path in paths.items() if not path.is_file()]
  if missing and not download:
    raise DataError(_missing_message(name, folder, missing, base, "download=false"))
  for file in missing:
    try:
      _download(base + file, paths[file], source.md5[file])
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # no network, 404, cut off, disk full
      reason = getattr(e, "reason", None) or e
      raise DataError(_missing_message(name, folder, missing, base, f"downloading {base + file} failed: {reason}"))
  return paths


def _missing_message(name: str, folder: pathlib.Path, files: list[str], base: str, why: str) -> str:
  return (f"data set {name}: {why}; put the file(s) {', '.join(files)} (from {base}) into {folder}/, "
          "or set data.root to the folder that holds them")


def _download(url: str, path: pathlib.Path, md5: str) -> None:
  """Streams `url` to a temporary file beside `path`, checks its MD5, then renames it into place."""
  digest = hashlib.md5(usedforsecurity=False)
  with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic.replacing(path) as f:
    size, promised = 0, response.headers.get("Content-Length")
    for block in iter(lambda: response.read(1 << 20), b""):
      digest.update(block)
      f.write(block)
      size += len(block)
    if promised is not None and size != int(promised):  # the server hung up early
      raise http.client.IncompleteRead(b"", int(promised) - size)
    if digest.hexdigest() != md5:  # raised inside the block: nothing is renamed into place
      raise DataError(f"the download of {url} is corrupt: its MD5 is {digest.hexdigest()}, the published one "
                      f"is {md5}; nothing was kept, try again later or put the file into {path.parent}/ yourself")
