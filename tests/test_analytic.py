"""The analytic test problems (models/analytic.py, data=analytic): values, gradients, minima and the quadratic's
spectrum against closed forms in NumPy; what a run of one logs; a sweep of them sharing one program; bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from omegaconf import open_dict

from conftest import compose_config, train_in_process
from trainlab import config, data, losses, models, train
from trainlab.models import analytic
from trainlab.rundir import sweep, writers

RNG = np.random.default_rng(0)


def _f(model, theta) -> float:
  """f(θ): the model's loss at ξ = 0, the validation example."""
  out = model.apply({"params": {"theta": np.asarray(theta, np.float32)}}, np.zeros((1, model.dim), np.float32),
                    train=False)
  return float(out[0, 0])


def _grad(model, theta, xi=None) -> np.ndarray:
  xi = np.zeros((1, model.dim), np.float32) if xi is None else np.asarray(xi, np.float32)[None]
  loss = lambda t: model.apply({"params": {"theta": t}}, xi, train=False)[0, 0]
  return np.asarray(jax.grad(loss)(np.asarray(theta, np.float32)))


def _outputs(model, theta) -> np.ndarray:
  return np.asarray(model.apply({"params": {"theta": np.asarray(theta, np.float32)}},
                                np.zeros((1, model.dim), np.float32), train=False))[0]


def _start(model) -> np.ndarray:
  return np.asarray(model.init(jax.random.PRNGKey(0), np.zeros((1, model.dim), np.float32), train=False)
                    ["params"]["theta"])


# --- the quadratic -------------------------------------------------------------------------------------------
def _quadratic(dim=6, kappa=50.0, **kw):
  return models.Quadratic(num_outputs=1, dim=dim, kappa=kappa, rotation_seed=3, **kw)


def _q_numpy(dim, kappa, seed=3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(Q, U, eigenvalues) of the quadratic in NumPy: eigenvalues log-spaced from 1 to kappa, U the model's rotation."""
  lam = np.logspace(0.0, np.log10(kappa), dim)
  u = analytic.rotation(dim, seed).astype(np.float64)
  return u @ np.diag(lam) @ u.T, u, lam


def test_quadratic_value_gradient_and_spectrum_are_the_closed_forms():
  model = _quadratic()
  q, u, lam = _q_numpy(6, 50.0)
  np.testing.assert_allclose(u.T @ u, np.eye(6), atol=1e-6)  # a rotation
  np.testing.assert_allclose(lam[[0, -1]], [1.0, 50.0])
  theta = RNG.normal(size=6)
  assert _f(model, theta) == pytest.approx(0.5 * theta @ q @ theta, rel=1e-5)
  np.testing.assert_allclose(_grad(model, theta), q @ theta, rtol=1e-5, atol=1e-5)
  hessian = np.asarray(jax.hessian(lambda t: model.apply({"params": {"theta": t}}, np.zeros((1, 6), np.float32),
                                                         train=False)[0, 0])(np.zeros(6, np.float32)))
  eigenvalues = np.linalg.eigvalsh(hessian)
  np.testing.assert_allclose(eigenvalues, lam, rtol=1e-5)
  assert eigenvalues[-1] / eigenvalues[0] == pytest.approx(50.0, rel=1e-5)  # the condition number, exactly kappa


def test_quadratic_starts_with_the_same_error_along_every_eigendirection_and_logs_it():
  model = _quadratic(start=0.5)
  _, u, _ = _q_numpy(6, 50.0)
  theta0 = _start(model)
  np.testing.assert_allclose(theta0, u @ np.full(6, 0.5), atol=1e-6)
  out = _outputs(model, theta0)
  assert out[1] == pytest.approx(np.linalg.norm(theta0), rel=1e-6)  # distance to the minimizer 0
  np.testing.assert_allclose(out[2:], np.full(6, 0.5), atol=1e-6)  # coord_i = u_i^T theta, smallest lambda first
  assert _f(model, np.zeros(6)) == 0.0 and not _grad(model, np.zeros(6)).any()


def test_quadratic_gradient_noise_has_covariance_proportional_to_q():
  """ℓ(θ; ξ) = f(θ) + noise (Sξ)ᵀθ: the gradient's noise is noise · S ξ with S Sᵀ = Q (Zhang et al. 2019)."""
  model = _quadratic(noise=0.3)
  q, _, _ = _q_numpy(6, 50.0)
  theta = RNG.normal(size=6)
  s = np.stack([(_grad(model, theta, xi) - _grad(model, theta)) / 0.3 for xi in np.eye(6)], axis=1)
  np.testing.assert_allclose(s @ s.T, q, rtol=1e-4, atol=1e-4)


# --- the others ----------------------------------------------------------------------------------------------
def _rosenbrock_numpy(t, b=100.0):
  f = np.sum(b * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2)
  g = np.zeros_like(t)
  g[:-1] += -4 * b * t[:-1] * (t[1:] - t[:-1] ** 2) - 2 * (1 - t[:-1])
  g[1:] += 2 * b * (t[1:] - t[:-1] ** 2)
  return f, g


def _beale_numpy(t):
  x, y = t
  a = [1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3]
  f = sum(ai ** 2 for ai in a)
  g = np.array([2 * a[0] * (y - 1) + 2 * a[1] * (y ** 2 - 1) + 2 * a[2] * (y ** 3 - 1),
                2 * a[0] * x + 4 * a[1] * x * y + 6 * a[2] * x * y ** 2])
  return f, g


def _saddle_numpy(t, negative, r):
  neg = np.arange(len(t)) >= len(t) - negative
  f = np.sum(np.where(neg, -t ** 2 + t ** 4 / (2 * r ** 2), t ** 2))
  g = np.where(neg, -2 * t + 2 * t ** 3 / r ** 2, 2 * t)
  return f, g


def _cliff_numpy(t, slope, wall, width):
  x, y = t
  f = 0.5 * y ** 2 - slope * x + wall * width * np.logaddexp(0.0, x / width)
  g = np.array([-slope + wall / (1 + np.exp(-x / width)), y])
  return f, g


CASES = {  # name: (model, NumPy (f, grad), minimizer, minimum)
    "rosenbrock": (models.Rosenbrock(num_outputs=1, dim=4), _rosenbrock_numpy, np.ones(4), 0.0),
    "beale": (models.Beale(num_outputs=1), _beale_numpy, np.array([3.0, 0.5]), 0.0),
    "saddle": (models.Saddle(num_outputs=1, dim=5, negative=2, radius=1.5),
               lambda t: _saddle_numpy(t, 2, 1.5), np.array([0, 0, 0, -1.5, 1.5]), -2 * 1.5 ** 2 / 2),
    "cliff": (models.Cliff(num_outputs=1, slope=1.0, wall=1000.0, width=0.01),
              lambda t: _cliff_numpy(t, 1.0, 1000.0, 0.01), np.array([0.01 * np.log(1 / 999), 0.0]),
              float(_cliff_numpy(np.array([0.01 * np.log(1 / 999), 0.0]), 1.0, 1000.0, 0.01)[0])),
}


@pytest.mark.parametrize("name", CASES)
def test_value_gradient_and_minimum_are_the_closed_forms(name):
  model, reference, minimizer, minimum = CASES[name]
  for _ in range(3):
    theta = RNG.uniform(-1.5, 1.5, model.dim)
    f, g = reference(theta)
    assert _f(model, theta) == pytest.approx(f, rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(_grad(model, theta), g, rtol=1e-4, atol=1e-4)
  assert _f(model, minimizer) == pytest.approx(minimum, rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(_grad(model, minimizer), 0.0, atol=1e-4)
  np.testing.assert_allclose(reference(minimizer)[1], 0.0, atol=1e-9)  # the minimizer is one, by NumPy too
  out = _outputs(model, minimizer + 0.25)
  assert out[1] == pytest.approx(0.25 * np.sqrt(model.dim), rel=1e-5)  # the distance to the nearest minimizer
  np.testing.assert_allclose(out[2:], minimizer + 0.25, rtol=1e-6)  # θ itself as coord_i


def test_usual_starts():
  np.testing.assert_allclose(_start(models.Rosenbrock(num_outputs=1)), [-1.2, 1.0])
  np.testing.assert_allclose(_start(models.Saddle(num_outputs=1, dim=3, negative=1)), [1.0, 1.0, 1e-6])
  np.testing.assert_allclose(_start(models.Cliff(num_outputs=1)), [-2.0, 0.5])


def test_saddle_hessian_at_the_origin_has_its_negative_directions():
  model = models.Saddle(num_outputs=1, dim=4, negative=3)
  hessian = jax.hessian(lambda t: model.apply({"params": {"theta": t}}, np.zeros((1, 4), np.float32),
                                              train=False)[0, 0])(np.zeros(4, np.float32))
  np.testing.assert_allclose(np.asarray(hessian), np.diag([2.0, -2.0, -2.0, -2.0]), atol=1e-6)


def test_noise_data_is_centred_draws_and_a_zero_example_to_evaluate():
  dataset = data.analytic(dim=3, n_train=1000, seed=0)
  assert dataset.x_train.shape == (1000, 3) and dataset.task == "objective" and dataset.layout == "noise"
  np.testing.assert_allclose(dataset.x_train.mean(axis=0), 0.0, atol=1e-6)
  assert dataset.x_train.std() == pytest.approx(1.0, rel=0.05)
  assert not dataset.x_val.any() and not dataset.x_test.any() and dataset.x_val.shape == (1, 3)


def test_objective_task_reads_the_columns():
  outputs = np.array([[2.0, 0.5, 1.0, -1.0]], np.float32)
  task = losses.TASKS["objective"]
  assert task.metric_name == "distance"
  assert float(task.loss(outputs, None)[0]) == 2.0 and float(task.metric(outputs, None)[0]) == 0.5
  assert {k: float(v[0]) for k, v in task.extras(outputs, None).items()} == {"coord_0": 1.0, "coord_1": -1.0}


# --- a run ---------------------------------------------------------------------------------------------------
QUICK = ["regularizer=[]", "diagnostics=off", "steps=40", "eval_every=10", "log_every=10"]


def test_a_run_logs_f_the_distance_and_the_coordinates(tmp_path):
  summary = train_in_process(["model=quadratic", "model.dim=2", "model.kappa=4.0", "optimizer=sgd",
                              "optimizer.lr=0.1", *QUICK], tmp_path)
  points = writers.read_metrics(tmp_path)
  val = [p for p in points if "val/loss" in p]
  assert [p["step"] for p in val] == [10, 20, 30, 40]
  # GD on a diagonal quadratic in its eigenbasis: coordinate i shrinks by (1 - lr lambda_i) per step, exactly
  for p in val:
    np.testing.assert_allclose([p["val/coord_0"], p["val/coord_1"]], [0.9 ** p["step"], 0.6 ** p["step"]],
                               rtol=1e-4, atol=1e-7)
    assert p["val/distance"] == pytest.approx(np.hypot(p["val/coord_0"], p["val/coord_1"]), rel=1e-5)
    assert p["val/loss"] == pytest.approx(0.5 * (p["val/coord_0"] ** 2 + 4 * p["val/coord_1"] ** 2), rel=1e-4)
  assert summary["status"] == "completed"
  assert summary["test/distance"] == summary["best_val/distance"] == val[-1]["val/distance"]
  assert writers.task_metric([summary]) == "distance"
  assert "test/distance" in sweep.METRIC_COLUMNS and "best_val/distance" in sweep.METRIC_COLUMNS


def _job(overrides):
  cfg = compose_config(overrides)
  with open_dict(cfg):
    del cfg["hydra"]
  return cfg


def test_a_sweep_of_values_shares_one_program():
  """Floats of the problem, the optimizer and the schedule are values: one Spec, one compiled program."""
  base = ["model=quadratic", "optimizer=momentum", *QUICK]
  specs = {train.setup(_job([*base, *extra])).spec for extra in (
      [], ["model.kappa=10.0"], ["optimizer.lr=0.05", "model.noise=0.5"], ["model.start=3.0", "seed=4"])}
  assert len(specs) == 1
  assert train.setup(_job([*base, "model.dim=4"])).spec not in specs  # a dimension is structure


@pytest.mark.parametrize("overrides,message", [
    (["model=quadratic", "data=spirals"], "model=quadratic cannot take data=spirals, whose examples are unordered "
     "vectors of shape (2,): quadratic takes draws of gradient noise (data=analytic); for unordered vectors use "
     "model=mlp or linear_chain"),
    (["model=mlp", "data=analytic"], "model=mlp cannot take data=analytic, whose examples are draws of gradient "
     "noise of shape (2,)"),
    (["model=quadratic", "data.dim=3"], "model=quadratic has dim=10 but data.dim=3"),
    (["model=saddle", "model.negative=2"], "model.negative=2 is not allowed with model.dim=2: a saddle has 1 to "
     "dim - 1 = 1 negative directions"),
    (["model=quadratic", "model.kappa=0.5"], "model.kappa=0.5 is not allowed: it must be >= 1"),
])
def test_bad_input_is_one_line(overrides, message, tmp_path):
  with pytest.raises(config.ConfigError) as caught:
    train_in_process([*overrides, *QUICK], tmp_path)
  assert str(caught.value).startswith(message)
  assert "\n" not in str(caught.value)


def test_report_draws_each_run_in_the_plane_over_the_contours(tmp_path):
  """trajectories.png: a line per run from the start point through each evaluation's (coord_0, coord_1), over f."""
  from omegaconf import OmegaConf
  from trainlab.rundir import report

  runs = []
  for job, (overrides, path) in enumerate({"optimizer.clip_norm=null": [(-1.9, 0.45), (-38.0, 0.04)],
                                           "optimizer.clip_norm=1.0": [(-1.9, 0.45), (-0.07, 0.0)]}.items()):
    run_dir = tmp_path / str(job)
    (run_dir / ".hydra").mkdir(parents=True)
    model = OmegaConf.to_container(compose_config(["model=cliff"]).model)
    OmegaConf.save(OmegaConf.create({"model": model}), run_dir / ".hydra" / "config.yaml")
    writers.write_summary(run_dir, {"status": "completed", "overrides": [overrides]})
    (run_dir / writers.METRICS_FILE).write_text("".join(
        f'{{"step": {10 * (i + 1)}, "val/coord_0": {x}, "val/coord_1": {y}, "val/distance": 1.0}}\n'
        for i, (x, y) in enumerate(path)))
    runs.append(run_dir)
  np.testing.assert_allclose(report.trajectory(writers.read_metrics(runs[0])), [(-1.9, 0.45), (-38.0, 0.04)])
  assert isinstance(report.plane_problem(runs[0]), models.Cliff)
  out = report.write_report(tmp_path)
  assert out["trajectories.png"].is_file()
  fig = report.plot_trajectories(report.group_runs(report.load_runs(tmp_path)))
  lines = {line.get_label(): line.get_xydata() for line in fig.axes[0].get_lines()}
  np.testing.assert_allclose(lines["optimizer.clip_norm=null"], [(-2.0, 0.5), (-1.9, 0.45), (-38.0, 0.04)])
  np.testing.assert_allclose(lines["optimizer.clip_norm=1.0"][-1], (-0.07, 0.0))
  np.testing.assert_allclose(lines["minimum"], [(0.01 * np.log(1 / 999), 0.0)], rtol=1e-5)
  assert report.plot_trajectories([]) is None


def test_diagnostics_see_the_quadratic_curvature(tmp_path):
  """The power method on Hessian-vector products (diagnostics.hessian_every) finds the largest eigenvalue, κ."""
  train_in_process(["model=quadratic", "model.dim=3", "model.kappa=7.0", "optimizer=sgd", "regularizer=[]",
                    "steps=20", "eval_every=10", "diagnostics.every=10", "diagnostics.hessian_every=10",
                    "diagnostics.histogram_every=0"], tmp_path)
  by_step: dict[int, dict] = {}
  for p in writers.read_metrics(tmp_path):
    by_step.setdefault(p["step"], {}).update(p)
  assert [s for s, p in by_step.items() if "curvature/top_eigenvalue" in p] == [0, 10, 20]
  for p in by_step.values():
    assert p["curvature/top_eigenvalue"] == pytest.approx(7.0, rel=1e-3)
    assert p["diag/model/param_norm"] > 0  # θ is the one "layer"


@pytest.mark.parametrize("batch", [4, 32])
def test_a_batch_gradient_has_the_noisy_quadratic_models_covariance(batch):
  """Batches of the training draws: the mean gradient's covariance is noise² Q / B (times (N - B) / (N - 1),
  drawn without replacement from N centred draws), so it shrinks with the batch size."""
  model = _quadratic(dim=3, kappa=10.0, noise=0.5)
  q, _, _ = _q_numpy(3, 10.0)
  dataset = data.analytic(dim=3, n_train=4096, seed=1)
  theta = np.asarray(RNG.normal(size=3), np.float32)
  batches = np.stack([dataset.x_train[RNG.permutation(4096)[:batch]] for _ in range(4000)])
  mean_loss = lambda t, x: model.apply({"params": {"theta": t}}, x, train=True)[:, 0].mean()
  grads = np.asarray(jax.vmap(jax.grad(mean_loss), in_axes=(None, 0))(theta, batches), np.float64)
  np.testing.assert_allclose(grads.mean(axis=0), q @ theta, atol=5 * 0.5 * np.sqrt(10.0 / (batch * 4000)))  # 5 s.e.
  expected = 0.25 * q / batch * (4096 - batch) / 4095
  assert np.linalg.norm(np.cov(grads.T) - expected) < 0.1 * np.linalg.norm(expected)
