"""trainlab's Hydra launcher `vectorized` (`trainlab train -m hydra/launcher=vectorized ...`).

Hydra finds launchers in the `hydra_plugins` namespace package: this package, with its config (config.py,
cheap to import: Hydra imports every plugin module at start-up) and the launcher (vectorized_launcher.py).
"""
