"""tensorboardX imported without PyTorch: trainlab hands it floats and numpy arrays, never torch tensors."""

from __future__ import annotations

import sys


def import_tensorboardx() -> None:
  """Imports tensorboardX once per process, with an installed but not yet imported torch hidden meanwhile.

  tensorboardX's writer module tries `import torch` as it is imported; an entry of None in sys.modules makes
  that import raise ImportError, which tensorboardX catches. A torch that is already imported is left alone.
  """
  # Importing torch only to be able to accept its tensors slows every run's start: docs/speed.md, section
  # "tensorboardX without torch".
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None
  try:
    import tensorboardX  # noqa: F401
  finally:
    del sys.modules["torch"]
