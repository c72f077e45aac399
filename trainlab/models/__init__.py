"""Models: flax.linen modules whose parameters are plain pytrees. Each option of the `model` config group names
one class here (`_target_: trainlab.models.NAME`), a feedforward.Model that declares the data layouts it reads."""

from trainlab.models.analytic import Beale, Cliff, Quadratic, Rosenbrock, Saddle
from trainlab.models.checks import check_init, check_input
from trainlab.models.convolutional import CNN, ResNet
from trainlab.models.feedforward import MLP, LinearChain, dropout
from trainlab.models.recurrent import GRU, LSTM, RNN

# The models in the order a mismatch error suggests them: the general ones first.
__all__ = ["MLP", "LinearChain", "CNN", "ResNet", "RNN", "LSTM", "GRU", "Quadratic", "Rosenbrock", "Beale",
           "Saddle", "Cliff", "check_init", "check_input", "dropout"]
