"""trainlab's Hydra plugins: the launcher `vectorized` (`trainlab train -m hydra/launcher=vectorized ...`) and the
sweeper `grid` (the default of `trainlab train -m`).

Hydra finds plugins in the `hydra_plugins` namespace package: this package, with their configs (config.py,
cheap to import: Hydra imports every plugin module at start-up), the launcher (vectorized_launcher.py, with its
vmapped loop in _vectorized_loop.py, which the scan skips) and the sweeper (grid_sweeper.py).
"""
