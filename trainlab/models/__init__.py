"""Models: flax.linen modules whose parameters are plain pytrees. Each option of the `model` config group names
one class here (`_target_: trainlab.models.NAME`)."""

from trainlab.models.networks import CNN, GRU, LSTM, MLP, RNN, LinearChain, ResNet, check_init, check_input, dropout

__all__ = ["CNN", "GRU", "LSTM", "LinearChain", "MLP", "RNN", "ResNet", "check_init", "check_input", "dropout"]
