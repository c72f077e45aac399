"""Analytic test problems: a known function f of a parameter vector θ, trained by the same loop as any model.

Each problem is a flax module whose one parameter is θ (`params["theta"]`, starting at the problem's start
point, whatever the `init` group says) and whose examples are draws ξ of gradient noise (data=analytic). Its
per-example loss is

    ℓ(θ; ξ) = f(θ) + noise · (S ξ)ᵀ θ,    ξ ~ N(0, I),

so the gradient of a batch of B examples is ∇f(θ) plus zero-mean noise of covariance noise² S Sᵀ / B: it
shrinks with the batch size as a minibatch gradient's does. S is Q^½ for the quadratic (the noisy quadratic
model of Zhang et al. 2019, noise covariance ∝ Q) and the identity for the others (the linear noise u·x + v·y of
DeepOBS's 2-D problems). The validation and test examples are ξ = 0, so `val/loss` and `test/loss` are f(θ).

The module returns, per example, the columns the `objective` task reads (losses.TASKS): ℓ(θ; ξ), the distance
from θ to the nearest minimizer (`distance`), and, where the dimension is at most MAX_LOGGED_DIM, the problem's
coordinates of θ (`coord_0`, `coord_1`, ...: θ itself, but for the quadratic, whose coordinates are θ's
components along Q's eigenvectors, smallest eigenvalue first: the error along each eigendirection).
Every float of a problem is a traced value, so a sweep over κ, the noise or the start compiles once.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from trainlab.config.schema import ConfigError
from trainlab.models.feedforward import Model

MAX_LOGGED_DIM = 10  # up to this dimension, each coordinate of θ is logged at every evaluation


class Problem(Model, kw_only=True):
  """A function f of θ with known minimizers. Subclasses give `dim`, `objective`, `minimizer` and `start_point`."""

  noise: Any = 0.0  # the scale of the gradient noise (see the module's docstring)
  inputs: ClassVar[tuple[str, ...]] = ("noise",)  # data=analytic: draws of the gradient noise
  dim: int = 2

  def objective(self, theta: jax.Array) -> jax.Array:
    """f(θ), a scalar."""
    raise NotImplementedError

  def minimizer(self, theta: jax.Array) -> jax.Array:
    """The minimizer nearest to θ (the one the distance is measured to)."""
    raise NotImplementedError

  def start_point(self) -> jax.Array:
    """θ at step 0."""
    raise NotImplementedError

  def noise_direction(self, xi: jax.Array) -> jax.Array:
    """S ξ for a batch of draws (B, dim): the direction of each example's noise."""
    return xi

  def coordinates(self, theta: jax.Array) -> jax.Array:
    """The coordinates of θ that are logged (coord_i)."""
    return theta

  def from_coordinates(self, coordinates: jax.Array) -> jax.Array:
    """θ from its coordinates: the inverse of `coordinates` (the report draws f over them)."""
    return coordinates

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # Unused: ξ = 0 at evaluation is what makes it the noiseless objective.
    if x.shape[-1] != self.dim:
      raise ConfigError(f"model={self.option} has dim={self.dim} but data.dim={x.shape[-1]}: data=analytic "
                        "takes model.dim (leave data.dim unset)")
    theta = self.param("theta", lambda _: jnp.asarray(self.start_point(), jnp.float32))
    value = self.objective(theta) + self.noise * (self.noise_direction(x) @ theta)  # (B,)
    seen = jax.lax.stop_gradient(theta)  # reported, not trained on (and the norm's gradient at 0 is NaN)
    columns = [value, jnp.broadcast_to(jnp.linalg.norm(seen - self.minimizer(seen)), value.shape)]
    if self.dim <= MAX_LOGGED_DIM:
      columns += list(jnp.broadcast_to(self.coordinates(seen)[:, None], (self.dim, *value.shape)))
    return jnp.stack(columns, axis=-1)


@functools.lru_cache(maxsize=8)
def rotation(dim: int, seed: int) -> np.ndarray:
  """A random rotation (Haar-distributed orthogonal matrix), the same for the same dim and seed."""
  from scipy.stats import ortho_group  # only the quadratic needs it

  return ortho_group.rvs(dim, random_state=seed).astype(np.float32)


def eigenvalues(dim: int, kappa: jax.Array) -> jax.Array:
  """dim eigenvalues log-spaced from 1 to κ: λ_i = κ^(i / (dim - 1)), so the condition number is exactly κ."""
  return jnp.power(kappa, jnp.arange(dim) / (dim - 1))


class Quadratic(Problem, kw_only=True):
  """f(θ) = ½ θᵀQθ with Q = U diag(λ) Uᵀ: eigenvalues log-spaced from 1 to κ (`kappa`), U a random rotation
  drawn from `rotation_seed`. The minimizer is 0; θ starts at U (start, ..., start), the same error `start`
  along every eigendirection, and its coordinates are Uᵀθ. Gradient descent at the best constant learning rate
  2 / (1 + κ) shrinks the error by (κ - 1) / (κ + 1) per step, heavy-ball momentum at its best by
  (√κ - 1) / (√κ + 1): about κ against √κ steps per e-fold."""

  dim: int = 10
  kappa: Any = 100.0
  start: Any = 1.0
  rotation_seed: int = 0
  option: ClassVar[str] = "quadratic"

  def _u(self) -> jax.Array:
    return jnp.asarray(rotation(self.dim, self.rotation_seed))

  def objective(self, theta):
    c = self._u().T @ theta
    return 0.5 * jnp.sum(eigenvalues(self.dim, self.kappa) * c * c)

  def minimizer(self, theta):
    return jnp.zeros_like(theta)

  def start_point(self):
    return self._u() @ jnp.full(self.dim, self.start, jnp.float32)

  def noise_direction(self, xi):
    u = self._u()
    return ((xi @ u) * jnp.sqrt(eigenvalues(self.dim, self.kappa))) @ u.T  # Q^½ ξ, Q^½ = U diag(√λ) Uᵀ

  def coordinates(self, theta):
    return self._u().T @ theta

  def from_coordinates(self, coordinates):
    return self._u() @ coordinates


class Rosenbrock(Problem, kw_only=True):
  """f(θ) = Σᵢ b (θᵢ₊₁ - θᵢ²)² + (1 - θᵢ)² (Rosenbrock 1960; the chained form in dim > 2): a curved,
  flat-bottomed valley with its minimum at (1, ..., 1). Starts at (start_x, start_y, start_x, ...), classically
  (-1.2, 1)."""

  b: Any = 100.0
  start_x: Any = -1.2
  start_y: Any = 1.0
  option: ClassVar[str] = "rosenbrock"

  def objective(self, theta):
    return jnp.sum(self.b * (theta[1:] - theta[:-1] ** 2) ** 2 + (1.0 - theta[:-1]) ** 2)

  def minimizer(self, theta):
    return jnp.ones_like(theta)

  def start_point(self):
    return jnp.where(jnp.arange(self.dim) % 2 == 0, self.start_x, self.start_y)


class Beale(Problem, kw_only=True):
  """f(x, y) = (1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)² (Beale 1958): flat plateaus and steep
  ridges, its minimum at (3, 0.5)."""

  start_x: Any = 1.0
  start_y: Any = 1.5
  option: ClassVar[str] = "beale"

  def objective(self, theta):
    x, y = theta
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2 + (2.625 - x + x * y ** 3) ** 2

  def minimizer(self, theta):
    return jnp.array([3.0, 0.5], theta.dtype)

  def start_point(self):
    return jnp.stack([self.start_x, self.start_y]).astype(jnp.float32)


class Saddle(Problem, kw_only=True):
  """f(θ) = Σ xᵢ² - Σ yⱼ² + Σ yⱼ⁴ / (2 r²), with θ = (x, y) and y its last `negative` coordinates: around 0 it is
  the saddle x² - y² (Hessian eigenvalues 2 and -2); the quartic term, negligible there, bounds it below, with
  minima at x = 0, yⱼ = ±r (r = `radius`). Starts at x = start_x, y = start_y: on y = 0, the gradient never
  leaves the saddle's stable set, so gradient descent converges to the saddle; a small start_y grows by
  (1 + 2 lr) per step of gradient descent; gradient noise leaves it from anywhere."""

  negative: int = 1
  radius: Any = 1.0
  start_x: Any = 1.0
  start_y: Any = 1e-6
  option: ClassVar[str] = "saddle"

  def __post_init__(self):
    if not 1 <= self.negative < self.dim:
      raise ConfigError(f"model.negative={self.negative} is not allowed with model.dim={self.dim}: a saddle has "
                        f"1 to dim - 1 = {self.dim - 1} negative directions")
    super().__post_init__()

  def _is_negative(self) -> jax.Array:
    return jnp.arange(self.dim) >= self.dim - self.negative

  def objective(self, theta):
    sign = jnp.where(self._is_negative(), -1.0, 1.0)
    wall = jnp.where(self._is_negative(), theta ** 4 / (2 * self.radius ** 2), 0.0)
    return jnp.sum(sign * theta ** 2 + wall)

  def minimizer(self, theta):
    return jnp.where(self._is_negative(), jnp.where(theta >= 0, self.radius, -self.radius), 0.0)

  def start_point(self):
    return jnp.where(self._is_negative(), self.start_y, self.start_x)


class Cliff(Problem, kw_only=True):
  """A steep wall at the end of a shallow valley (the cliff of Goodfellow et al. 2016, fig. 8.3, from Pascanu et
  al. 2013): f(x, y) = ½ y² - slope · x + wall · width · softplus(x / width). Along x the floor descends gently
  (gradient -slope) toward x = 0, where within a few `width` it turns into a wall of gradient `wall` - slope. The
  minimum, at the foot of the wall, is x* = width · log(slope / (wall - slope)), y* = 0. A gradient step that
  lands on the wall is thrown back by about lr · wall, far past where it came from; a step clipped to norm c moves
  at most lr · c."""

  slope: Any = 1.0
  wall: Any = 1000.0
  width: Any = 0.01
  start_x: Any = -2.0
  start_y: Any = 0.5
  option: ClassVar[str] = "cliff"

  def objective(self, theta):
    x, y = theta
    return 0.5 * y ** 2 - self.slope * x + self.wall * self.width * jax.nn.softplus(x / self.width)

  def minimizer(self, theta):
    x_star = self.width * jnp.log(self.slope / (self.wall - self.slope))
    return jnp.stack([x_star, jnp.zeros_like(x_star)]).astype(theta.dtype)

  def start_point(self):
    return jnp.stack([self.start_x, self.start_y]).astype(jnp.float32)
