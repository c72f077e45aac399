"""trainlab: see what an optimizer, initializer, regularizer or schedule does to training."""
