"""benchmarks/scale_plan.py: the roofline's arithmetic against hand-computed values, and its count of
a compiled program's collectives against what the program does."""

import math

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import scale_plan

# A made-up target with round figures, so that every expected value below is plain arithmetic.
NODES = scale_plan.Hardware(chips=16, hbm_bytes=80e9, peak_flops=1e15, fast_link="NVLink", fast_bandwidth=400e9,
                            domain=4, slow_link="IB", slow_bandwidth=50e9)
TORUS = scale_plan.Hardware(chips=64, hbm_bytes=16e9, peak_flops=2e14, fast_link="ICI", fast_bandwidth=200e9,
                            domain=64, ici_ports=4, torus_length=8)


def test_ring_within_one_domain():
  # 8 GB gathered over 4 chips of a node: each sends 3/4 of it over NVLink at 400 GB/s.
  sent, seconds = scale_plan.all_gather(NODES, 4, 1, 8e9)
  assert sent == pytest.approx(6e9)
  assert seconds == pytest.approx(6e9 / 400e9)


def test_hierarchical_across_domains():
  # 4 in a node x 4 nodes: 3/4 x 8 GB over NVLink, then 3/4 x 8 GB / 4 over one IB NIC at 50 GB/s.
  sent, seconds = scale_plan.all_gather(NODES, 4, 4, 8e9)
  assert sent == pytest.approx(6e9 + 1.5e9)
  assert seconds == pytest.approx(6e9 / 400e9 + 1.5e9 / 50e9)
  # Across nodes only (data parallel, one chip a node on the axis): no NVLink part.
  assert scale_plan.all_gather(NODES, 1, 4, 8e9)[1] == pytest.approx(0.75 * 8e9 / 50e9)
  assert scale_plan.all_gather(NODES, 1, 1, 8e9) == (0.0, 0.0)


def test_torus_ports_an_axis_uses():
  # 8 chips a dimension of a 2D torus with 4 ports: an axis within one dimension rides 2 ports.
  assert scale_plan.fast_bandwidth(TORUS, 2) == pytest.approx(100e9)
  assert scale_plan.fast_bandwidth(TORUS, 8) == pytest.approx(100e9)
  assert scale_plan.fast_bandwidth(TORUS, 16) == pytest.approx(200e9)
  assert scale_plan.fast_bandwidth(TORUS, 64) == pytest.approx(200e9)
  assert scale_plan.fast_bandwidth(NODES, 4) == 400e9  # A switch: every GPU its whole bandwidth.


def test_placement_puts_tensor_innermost():
  assert scale_plan.placement(NODES, (1, 8, 2)) == {"tensor": (2, 1), "fsdp": (2, 4), "data": (1, 1)}
  assert scale_plan.placement(NODES, (4, 4, 1)) == {"tensor": (1, 1), "fsdp": (4, 1), "data": (1, 4)}
  assert scale_plan.placement(TORUS, (2, 16, 2)) == {"tensor": (2, 1), "fsdp": (16, 1), "data": (2, 1)}


def test_roofline_terms():
  shape, rows = (2, 4, 2), 3  # On NODES: tensor 2 in a node, fsdp 2 in a node x 2 nodes, data 2 nodes.
  params, act, layers, flops = 16e9, 1e6, 10, 1e13
  r = scale_plan.roofline(NODES, shape, rows=rows, flops_per_row=flops, param_bytes=params,
                          activation_bytes_per_row=act, num_layers=layers, mfu=0.5)
  assert r["compute_s"] == pytest.approx(rows * flops / 2 / (1e15 * 0.5))
  gathered = params / 2  # Each tensor rank gathers its half of the parameters over fsdp.
  assert r["fsdp_s"] == pytest.approx(3 * (0.5 * gathered / 400e9 + 0.5 * gathered / 2 / 50e9))
  assert r["tensor_s"] == pytest.approx(4 * layers * 2 * 0.5 * rows * act / 400e9)
  assert r["data_s"] == pytest.approx(2 * 0.5 * params / 8 / 50e9)
  assert r["comm_s"] == pytest.approx(r["fsdp_s"] + r["tensor_s"] + r["data_s"])
  assert r["step_s"] == max(r["compute_s"], r["comm_s"])
  assert r["step_sum_s"] == pytest.approx(r["compute_s"] + r["comm_s"])
  sent = 3 * (0.5 * gathered + 0.5 * gathered / 2) + 8 * layers * 0.5 * rows * act + 2 * 0.5 * params / 8
  assert r["comm_bytes"] == pytest.approx(sent)


def test_compute_bound_rows():
  # Collectives 10 ms whatever the rows, 3 ms compute a row: 4 rows (12 ms) is the first power of two.
  roof = lambda rows: {"compute_s": 3e-3 * rows, "comm_s": 10e-3}  # noqa: E731
  assert scale_plan.compute_bound_rows(roof, 64) == 4
  assert scale_plan.compute_bound_rows(roof, 2) == 2  # Communication-bound up to the cap.


def test_counts_collectives_of_a_compiled_loop():
  """A psum of 1024 float32 five times in a loop and one all-gather of 8 x 128 float32 over the
  test session's 8 devices: the ring bytes each device sends, loop trips included."""
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("x",))

  def body(v):
    def step(carry, _):
      return jax.lax.psum(carry, "x") * 0.5, None
    summed, _ = jax.lax.scan(step, v[:1024], None, length=5)
    return summed, jax.lax.all_gather(v[:128], "x", tiled=True)

  fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=(P("x"), P()), check_vma=False))
  x = jax.ShapeDtypeStruct((n * 1024,), jnp.float32, sharding=NamedSharding(mesh, P("x")))
  hlo = fn.lower(x).compile().as_text()
  sent = scale_plan.hlo_collective_bytes(hlo)
  assert sent["all-reduce"] == pytest.approx(5 * 2 * (n - 1) / n * 1024 * 4)
  assert sent["all-gather"] == pytest.approx((n - 1) / n * n * 128 * 4)
  assert math.isclose(sum(sent.values()), sent["all-reduce"] + sent["all-gather"])
