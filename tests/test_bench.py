"""The benchmark is not a test of speed; this only checks that every path of it runs, at a tiny size."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_mlp_runs_at_a_tiny_size(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--only", "mlp", "--out",
                         str(tmp_path)], capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  (result,) = tmp_path.glob("bench-*.json")
  table = json.loads(result.read_text())
  assert table["mlp"]["trainlab_epoch_s"] > 0 and 0 < table["mlp"]["trainlab_pct_of_peak"]


@pytest.mark.slow  # about 90 s: every workload compiles several programs
def test_bench_runs_at_a_tiny_size(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--out", str(tmp_path)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  (result,) = tmp_path.glob("bench-*.json")
  table = json.loads(result.read_text())
  assert table["mlp"]["trainlab_epoch_s"] > 0 and table["mlp"]["matmul_peak_gflops"] > 0
  assert table["sweep"]["jobs"] == 2 and table["sweep"]["fresh_processes_s"] > 0
  assert table["sweep"]["multirun_command_s"] > 0
  for mode in ("cold", "warm", "sweep"):  # the best-of estimate, the paired medians and the runs' own account
    assert {f"{mode}_diagnostics_cost_pct", f"{mode}_diagnostics_cost_pct_paired_median",
            f"{mode}_diagnostics_cost_pct_outside_chunks", f"{mode}_chunks_time_ratio_paired_median",
            f"{mode}_diagnostics_share_pct_median"} <= set(table["diagnostics"])
  assert table["vectorized"]["jobs"] == 2 and table["vectorized"]["vectorized_s"] > 0
  # 8 simulated devices in a child process against one, on the same global batch
  assert table["data_parallel"]["simulated_on_cpu"] and table["data_parallel"]["batch128_8_devices_time_ratio"] > 0
  # a vectorized group's members split over 8 simulated devices against one device
  assert table["vectorized_mesh"]["simulated_on_cpu"] and table["vectorized_mesh"]["8_devices_time_ratio"] > 0
  for workload in ("cnn", "resnet"):  # the loop with the device's convolution, XLA's in the loop, a jitted step
    assert table[workload]["conv_impl_auto"] == "im2col"  # on CPU
    assert table[workload]["trainlab_loop_ms"] > 0 and table[workload]["trainlab_loop_xla_conv_ms"] > 0
    assert table[workload]["loop_speedup_vs_xla_conv_loop"] == pytest.approx(
        table[workload]["trainlab_loop_xla_conv_ms"] / table[workload]["trainlab_loop_ms"])
  assert len([k for k in table["layers"] if k.endswith("_ms") and "pytorch" not in k]) == 8


def test_bench_layers_runs_at_a_tiny_size(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--tiny", "--only", "layers", "--out",
                         str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  (result,) = tmp_path.glob("bench-*.json")
  layers = json.loads(result.read_text())["layers"]
  ours = {k: v for k, v in layers.items() if k.endswith("_ms") and "pytorch" not in k}
  assert len(ours) == 8 and all(v > 0 for v in ours.values())  # every convolution shape of the default resnet
