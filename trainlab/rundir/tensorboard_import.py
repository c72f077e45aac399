"""tensorboardX imported without PyTorch: trainlab hands it floats and numpy arrays, never torch tensors. (Speed only,
but kept out of trainlab.fast, whose JAX imports the CLI must not wait for.)"""

import sys


def import_tensorboardx() -> None:
  """Imports tensorboardX once per process, hiding a torch not yet imported meanwhile (None in sys.modules
  makes tensorboardX's `import torch` raise ImportError, which it catches); an imported torch is left alone."""
  # Importing torch would slow every run's start: docs/speed.md, section "tensorboardX without torch".
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None
  try:
    import tensorboardX  # noqa: F401
  finally:
    del sys.modules["torch"]
