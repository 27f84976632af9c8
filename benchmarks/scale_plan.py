"""Scale plan: mesh and global batch for a preset on a TPU slice or GPU cluster, an estimate.

    python benchmarks/scale_plan.py [--presets mmar_0p5b,mmar_7b] [--targets v5e-256,v5p-128,h100-8x8]
        [--seq-len 1024] [--mfu 1.0] [--hbm-margin 0.25] [--max-rows 64] [--quick] [--json]

For each preset and target, a few candidate meshes: pure FSDP over every chip (data x fsdp where
the width does not split that many ways), FSDP x tensor parallel, and on the GPU cluster data
parallel across its nodes (InfiniBand) with FSDP (x tensor) within each (NVLink). Each candidate's
train step is compiled, never run, on as many fake CPU devices as the target has chips
(benchmarks/memory.py: parameters and optimizer state per device from the shardings, temporaries
from XLA's memory analysis, +-20-30%). A candidate fits when its peak is below the chip's HBM
less --hbm-margin.

Roofline of one step, per device, with every figure from HARDWARE (printed as assumed):

  compute = r x F / (t x peak x mfu)         r rows per batch shard, F = loop.training_flops_per_row
                                             (train/flops.py: 3 x forward, every parameter's gradient)
  fsdp    = 3 x AG(P / t)                    all-gather of the parameters forward and again backward,
                                             reduce-scatter of the gradients; P = parameter bytes as
                                             stored (float32: XLA gathers them before the cast)
  tensor  = 4 L x AR(r x l x d x c)          2 all-reduces a layer forward (attention out, MLP down),
                                             2 backward, of the rows' activations in the compute dtype
  data    = AR(P / (f x t))                  all-reduce of each device's gradient shard
  step    = max(compute, fsdp + tensor + data)  (perfect overlap; the sum is printed too)

with (d, f, t) the mesh's data, fsdp and tensor sizes, L layers, l = data.seq_len, d the width,
c the compute dtype's bytes. AG(S) is a ring all-gather (or reduce-scatter) of S gathered bytes
over one mesh axis of n = n_in x n_out chips, n_in of them within the fast domain (a TPU slice;
an H100 node of 8) and n_out across the slow network (hierarchically, as NCCL does):

  AG(S) = (n_in - 1) / n_in x S / B_fast  +  (n_out - 1) / n_out x S / n_in / B_slow,   AR = 2 x AG

B_fast on a TPU is the chip's one-way ICI bandwidth times the share of its ports the axis uses: a
ring along one torus dimension uses 2 ports, an axis spanning k dimensions 2k (a tensor axis of 2-4
chips uses one dimension). On an H100 node NVSwitch gives every GPU its whole NVLink bandwidth.
The mesh's tensor axis is innermost, then fsdp, then data (jax.make_mesh's order; mesh.dcn_data
puts data across nodes explicitly). Latency, imperfect overlap and the adapter's and head's
own collectives are not modelled: the step times are lower bounds.

The recommendation per preset and target: for each fitting candidate the largest power-of-two
rows per shard r, up to the first that makes the step compute-bound, whose compiled peak fits;
then the candidate with the most rows a second (within 3%: the smaller global batch, then the
simpler mesh). Gradient accumulation is not a way out of being communication-bound here: under
FSDP every micro-batch gathers the parameters again.

Cross-check: the bytes each device sends in the compiled program's collectives (XLA:CPU's SPMD
partitioning, loops counted by their trip counts). XLA:CPU reduces gradients with an all-reduce
and a slice where the TPU and GPU pipelines form a reduce-scatter (half the bytes), so its count
runs above the model's by about one gradient all-reduce.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmar_jax.train.metrics import PEAK_FLOPS  # noqa: E402  (MFU's data-sheet peaks: one table)

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One target: its chips and links, public data-sheet figures (bytes and bytes/s, one direction)."""
  chips: int
  hbm_bytes: float
  peak_flops: float  # Dense bfloat16 matmul FLOP/s per chip.
  fast_link: str
  fast_bandwidth: float  # One direction, per chip, all its ports.
  domain: int  # Chips the fast link joins: the whole slice on a TPU, one node on a GPU cluster.
  ici_ports: int = 0  # TPU: ICI ports per chip (2 per torus dimension). 0: a switch (NVSwitch).
  torus_length: int = 0  # TPU: chips along one torus dimension.
  slow_link: str = ""
  slow_bandwidth: float = 0.0  # One direction, per chip, across domains.
  source: str = ""


HARDWARE = {
    # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2, ICI 1,600 Gbps (400 GB/s both
    # directions) per chip over 4 ports, 256 chips in a 16 x 16 2D torus. One slice: no DCN.
    "v5e-256": Hardware(chips=256, hbm_bytes=16e9, peak_flops=PEAK_FLOPS["TPU v5 lite"], fast_link="ICI", fast_bandwidth=200e9,
                        domain=256, ici_ports=4, torus_length=16,
                        source="cloud.google.com/tpu/docs/v5e (16x16, 4 ICI ports)"),
    # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e, ICI 4,800 Gbps (1,200 GB/s both
    # directions) per chip over a 3D torus (6 ports). v5p-128 counts TensorCores: 4x4x4 = 64 chips.
    "v5p-128": Hardware(chips=64, hbm_bytes=95e9, peak_flops=PEAK_FLOPS["TPU v5"], fast_link="ICI", fast_bandwidth=600e9,
                        domain=64, ici_ports=6, torus_length=4,
                        source="cloud.google.com/tpu/docs/v5p (4x4x4 = 64 chips, 128 TensorCores)"),
    # H100 SXM5: 989 TFLOP/s dense bf16 (1,979 with sparsity), 80 GB HBM3, NVLink 4 900 GB/s both
    # directions; DGX H100 / HGX nodes of 8 with one 400 Gb/s ConnectX-7 InfiniBand NIC per GPU.
    "h100-8x8": Hardware(chips=64, hbm_bytes=80e9, peak_flops=PEAK_FLOPS["NVIDIA H100"], fast_link="NVLink", fast_bandwidth=450e9,
                         domain=8, slow_link="InfiniBand", slow_bandwidth=50e9,
                         source="NVIDIA H100 SXM data sheet; DGX H100 user guide (8 x CX-7 400 Gb/s)"),
}


def fast_bandwidth(hw: Hardware, chips: int) -> float:
  """One-way bandwidth a device has for a collective over `chips` chips of its fast domain."""
  if not hw.ici_ports:
    return hw.fast_bandwidth
  dims = max(1, math.ceil(math.log(chips) / math.log(hw.torus_length) - 1e-9))
  return hw.fast_bandwidth * min(hw.ici_ports, 2 * dims) / hw.ici_ports


def placement(hw: Hardware, shape: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
  """(n_in, n_out) of each mesh axis: its chips within one fast domain and across domains.
  The tensor axis is innermost, then fsdp, then data."""
  room, out = hw.domain, {}
  for axis, size in zip(("tensor", "fsdp", "data"), reversed(shape)):
    inner = math.gcd(size, room)
    room //= inner
    out[axis] = (inner, size // inner)
  return out


def all_gather(hw: Hardware, n_in: int, n_out: int, nbytes: float) -> tuple[float, float]:
  """(bytes a device sends, seconds) of a ring all-gather or reduce-scatter of `nbytes` gathered
  bytes over n_in chips within a domain x n_out across (hierarchical: the slow part first)."""
  fast = (n_in - 1) / n_in * nbytes
  slow = (n_out - 1) / n_out * nbytes / n_in
  seconds = (fast / fast_bandwidth(hw, n_in) if n_in > 1 else 0.0) + (slow / hw.slow_bandwidth if n_out > 1 else 0.0)
  return fast + slow, seconds


def roofline(hw: Hardware, shape: tuple[int, int, int], *, rows: int, flops_per_row: float, param_bytes: float,
             activation_bytes_per_row: float, num_layers: int, mfu: float = 1.0) -> dict[str, float]:
  """The step's compute and collective times (seconds) and bytes per device; formulas in the docstring."""
  data, fsdp, tensor = shape
  where = placement(hw, shape)
  gather_bytes, gather_s = all_gather(hw, *where["fsdp"], param_bytes / tensor)
  tensor_bytes, tensor_s = all_gather(hw, *where["tensor"], rows * activation_bytes_per_row)
  data_bytes, data_s = all_gather(hw, *where["data"], param_bytes / (fsdp * tensor))
  out = dict(compute_s=rows * flops_per_row / tensor / (hw.peak_flops * mfu),
             fsdp_s=3 * gather_s, tensor_s=4 * num_layers * 2 * tensor_s, data_s=2 * data_s,
             comm_bytes=3 * gather_bytes + 8 * num_layers * tensor_bytes + 2 * data_bytes)
  out["comm_s"] = out["fsdp_s"] + out["tensor_s"] + out["data_s"]
  out["step_s"] = max(out["compute_s"], out["comm_s"])
  out["step_sum_s"] = out["compute_s"] + out["comm_s"]
  return out


def compute_bound_rows(roof, max_rows: int) -> int:
  """The fewest power-of-two rows per shard whose compute covers the collectives (`roof(r)` gives the
  roofline at r rows), or max_rows when none up to it does."""
  rows = 1
  while rows < max_rows and roof(rows)["compute_s"] < roof(rows)["comm_s"]:
    rows *= 2
  return min(rows, max_rows)


# Collectives in compiled HLO text: `%x = f32[8,128]{1,0} all-gather(...)`, tuples for variadic ones.
_COLLECTIVE = re.compile(r"=\s*(\([^=]*?\)|\S+)\s+(all-gather|reduce-scatter|all-reduce|all-to-all|"
                         r"collective-permute)(-start)?\(")
_ARRAY = re.compile(r"\b(pred|bf16|[fsu]\d+)\[([\d,]*)\]")


def _group_size(line: str) -> int:
  mesh_groups = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", line)  # mesh['axis_0'=8,..] {'axis_0'}
  if mesh_groups:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh_groups.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh_groups.group(2)))
  iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)  # [groups, size]<=[...]
  if iota:
    return int(iota.group(2))
  listed = re.search(r"replica_groups=\{\{([^}]*)\}", line)
  return len(listed.group(1).split(",")) if listed else 1


def hlo_collective_bytes(hlo: str) -> dict[str, float]:
  """Bytes one device sends in each kind of collective of a compiled program (ring algorithms:
  (n-1)/n of the gathered size, twice that for an all-reduce), loop bodies times their trip count."""
  bodies, order, current, entry = {}, [], None, None
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$", line)
    if head and current is None:
      current = head.group(2)
      bodies[current], entry = [], current if head.group(1) else entry
      order.append(current)
    elif line.startswith("}"):
      current = None
    elif current:
      bodies[current].append(line)
  # A computation is printed before its callers, so walking backwards meets every caller first.
  runs = collections.Counter({entry: 1})
  for name in reversed(order):
    for line in bodies[name]:
      trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
      for callee in re.findall(r"body=%([\w.\-]+)", line):
        runs[callee] += runs[name] * (int(trips.group(1)) if trips else 1)
      for callee in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line):
        runs[callee] += runs[name]
      for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
        for callee in re.findall(r"%([\w.\-]+)", group):
          runs[callee] += runs[name]
  sent = collections.Counter()
  for name in order:
    for line in bodies[name] if runs[name] else ():
      found = _COLLECTIVE.search(line)
      if not found:
        continue
      kind, n = found.group(2), _group_size(line)
      size = sum(math.prod(int(x) for x in dims.split(",") if x) * _itemsize(dtype)
                 for dtype, dims in _ARRAY.findall(found.group(1)))
      share = {"collective-permute": 1.0, "all-reduce": 2 * (n - 1) / n, "reduce-scatter": n - 1.0}.get(kind,
                                                                                                     (n - 1) / n)
      sent[kind] += size * share * runs[name]
  return dict(sent)


def _itemsize(dtype: str) -> int:
  return 1 if dtype == "pred" else 2 if dtype == "bf16" else max(1, int(dtype[1:]) // 8)


# ---------------------------------------------------------------------------------------------
# Compiling the candidates (benchmarks/memory.py) and choosing.


def tensor_degree(config, hw: Hardware) -> int:
  """The largest power of two that divides the KV heads (and so the heads) and fits one fast domain."""
  t = 1
  while config.model.num_kv_heads % (2 * t) == 0 and 2 * t <= hw.domain:
    t *= 2
  return t


def candidates(config, hw: Hardware) -> list[tuple[str, tuple[int, int, int] | int]]:
  """(name, mesh) to try; an int mesh is "that tensor degree, FSDP as wide as the widths allow"."""
  t = tensor_degree(config, hw)
  out = [("fsdp", 1), (f"fsdp x tensor {t}", t)]
  if hw.slow_link:
    nodes = hw.chips // hw.domain
    out += [(f"data {nodes} ({hw.slow_link}) x fsdp {hw.domain}", (nodes, hw.domain, 1)),
            (f"data {nodes} ({hw.slow_link}) x fsdp {hw.domain // t} x tensor {t}", (nodes, hw.domain // t, t))]
  return out


class Compiler:
  """Compiles one preset's train step on meshes of fake devices, each (mesh, rows) once."""

  def __init__(self, config):
    from benchmarks import memory  # Sets the fake device count before jax's backend starts.
    from mmar_jax.train import loop
    self.memory, self.config = memory, config
    self.exp = memory.build(config)
    self.tx = loop.build_optimizer(self.exp, config)
    self.cache = {}

  def mesh(self, spec, chips: int):
    """((mesh, state shardings), None), or (None, why) when the mesh does not divide a parameter."""
    from mmar_jax import configs
    try:
      if isinstance(spec, tuple):
        return self.memory.shard(self.config, self.exp, self.tx, spec), None
      return self.memory.layout(self.config, self.exp, self.tx, chips, spec), None
    except configs.ConfigError as e:
      return None, str(e)

  def measure(self, mesh_and_shardings, rows: int) -> dict:
    mesh, shardings = mesh_and_shardings
    key = (tuple(mesh.shape.values()), rows)
    if key not in self.cache:
      result = self.memory.compile_step(self.config, self.exp, self.tx, mesh, shardings, rows)
      result["collectives"] = hlo_collective_bytes(result.pop("compiled").as_text())
      self.cache[key] = result
    return self.cache[key]


def plan_candidate(compiler: Compiler, hw: Hardware, spec, *, cap: float, flops_per_row: float, max_rows: int,
                   mfu: float, quick: bool) -> dict:
  """One candidate's rows per shard, memory and roofline (or why it was rejected)."""
  import jax.numpy as jnp
  model = compiler.config.model
  built, error = compiler.mesh(spec, hw.chips)
  if error:
    return dict(rejected=f"does not shard: {error.splitlines()[0][:100]}")
  shape = tuple(built[0].shape.values())
  first = compiler.measure(built, 1)
  activation_bytes = compiler.config.data.seq_len * model.hidden_size * jnp.dtype(model.dtype).itemsize

  def roof(rows):
    return roofline(hw, shape, rows=rows, flops_per_row=flops_per_row, param_bytes=first["params_whole"],
                    activation_bytes_per_row=activation_bytes, num_layers=model.num_layers, mfu=mfu)

  out = dict(mesh=shape, peak_at_1_row=first["peak"], compute_bound_rows=compute_bound_rows(roof, max_rows))
  if first["peak"] > cap:
    return dict(out, rejected=f"peak {first['peak'] / GIB:.1f} GiB at 1 row > {cap / GIB:.1f} GiB usable")
  rows, result, estimated = out["compute_bound_rows"], first, False
  if rows > 1 and quick:
    # Every temporary scaled with the rows: an upper bound (gathered weights do not grow).
    while rows > 1 and first["peak"] + (rows - 1) * first["temp"] > cap:
      rows //= 2
    estimated = rows > 1
    result = dict(first, peak=first["peak"] + (rows - 1) * first["temp"])
  elif rows > 1:
    result = compiler.measure(built, rows)
    if result["peak"] > cap:  # Jump to where the line through the two compiles meets the cap.
      slope = (result["peak"] - first["peak"]) / (rows - 1)
      fit = max(1, int((cap - first["peak"]) / slope) + 1)
      rows = 2 ** int(math.log2(fit))
      result = compiler.measure(built, rows)
      while rows > 1 and result["peak"] > cap:
        rows //= 2
        result = compiler.measure(built, rows)
  return dict(out, rows=rows, peak=result["peak"], peak_estimated=estimated, collectives=result["collectives"],
              compiled_rows=rows if not estimated else 1, compile_s=result["compile_s"], **roof(rows))


def choose(plans: list[dict], hw: Hardware) -> dict | None:
  """The fitting plan with the most rows a second; within 3%, the smaller global batch, then fewer axes."""
  fitting = [p for p in plans if "rejected" not in p]
  if not fitting:
    return None
  for p in fitting:
    p["global_batch"] = p["rows"] * p["mesh"][0] * p["mesh"][1]
    p["rows_per_s"] = p["global_batch"] / p["step_s"]
  best = max(p["rows_per_s"] for p in fitting)
  close = [p for p in fitting if p["rows_per_s"] >= 0.97 * best]
  return min(close, key=lambda p: (p["global_batch"], sum(n > 1 for n in p["mesh"])))


def overrides(plan: dict, hw: Hardware) -> str:
  """The config overrides that run the plan's mesh and batch."""
  data, fsdp, tensor = plan["mesh"]
  where = placement(hw, plan["mesh"])
  if where["data"][1] > 1 and where["data"][0] == 1 and where["fsdp"][1] == 1:
    mesh = f"mesh.dcn_data={data} mesh.data=1 mesh.fsdp={fsdp} mesh.tensor={tensor}"  # Data across nodes only.
  else:
    mesh = f"mesh.data={data} mesh.fsdp={fsdp} mesh.tensor={tensor}"
  return f"{mesh} data.batch_size={plan['global_batch']}"


def print_assumptions(args, targets):
  print("Assumed figures (public data sheets; one direction per chip unless said):")
  for name in targets:
    hw = HARDWARE[name]
    slow = (f", {hw.slow_link} {hw.slow_bandwidth / 1e9:.0f} GB/s per chip across domains of {hw.domain}"
            if hw.slow_link else ", one slice (no DCN)")
    ports = f" over {hw.ici_ports} ports ({hw.torus_length} chips a torus dimension)" if hw.ici_ports else ""
    print(f"  {name}: {hw.chips} chips, HBM {hw.hbm_bytes / 1e9:.0f} GB, peak {hw.peak_flops / 1e12:.0f} TFLOP/s bf16 "
          f"dense, {hw.fast_link} {hw.fast_bandwidth / 1e9:.0f} GB/s{ports}{slow}  [{hw.source}]")
  print(f"  compute at {args.mfu:.0%} of peak; links at 100% of their bandwidth, no latency; HBM usable: "
        f"{1 - args.hbm_margin:.0%} (margin {args.hbm_margin:.0%} for XLA:CPU's +-20-30% memory estimate)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="mmar_0p5b,mmar_7b")
  parser.add_argument("--targets", default=",".join(HARDWARE))
  parser.add_argument("--seq-len", type=int, default=0, help="data.seq_len (0: the preset's)")
  parser.add_argument("--mfu", type=float, default=1.0, help="share of peak FLOP/s the compute runs at")
  parser.add_argument("--hbm-margin", type=float, default=0.25, help="share of HBM kept free")
  parser.add_argument("--max-rows", type=int, default=64, help="most rows per batch shard tried")
  parser.add_argument("--quick", action="store_true",
                      help="compile one row per shard only; more rows' memory extrapolated (an upper bound)")
  parser.add_argument("--override", action="append", default=[], help="config override, e.g. model.remat_policy=full")
  parser.add_argument("--json", action="store_true", help="also print one JSON line of everything")
  args = parser.parse_args()
  targets = args.targets.split(",")
  for name in targets:
    if name not in HARDWARE:
      parser.error(f"--targets: unknown {name!r}; known: {', '.join(HARDWARE)}")

  from benchmarks import memory  # noqa: F401  (the fake devices, before anything starts jax's backend)
  import jax
  from mmar_jax import configs
  from mmar_jax.train import loop
  need = max(HARDWARE[t].chips for t in targets)
  if jax.device_count() < need:
    raise SystemExit(f"{jax.device_count()} devices, {need} needed: set --xla_force_host_platform_device_count")

  start = time.perf_counter()
  print("Scale plan, an ESTIMATE: compile-only memory on simulated meshes of XLA:CPU devices and a roofline of "
        "the step time.")
  print_assumptions(args, targets)
  header = (f"{'preset':<10} {'target':<9} {'candidate':<34} {'mesh d,f,t':>12} {'rows':>4} {'batch':>5} "
            f"{'peak GiB':>8} {'compute':>8} {'fsdp':>7} {'tensor':>7} {'data':>7} {'step max':>8} {'sum':>7} "
            f"{'bound':>7} {'model GB':>8} {'XLA GB':>7}")
  records = []
  for preset in args.presets.split(","):
    extra = [f"data.seq_len={args.seq_len}"] if args.seq_len else []
    config = configs.load_config(f"configs/{preset}.py", ["data.num_workers=0", *extra, *args.override])
    config.unlock()
    flops_per_row = loop.training_flops_per_row(config)
    compiler = Compiler(config)
    print(f"\n# {preset}: seq_len {config.data.seq_len}, {configs.num_image_tokens(config)} image tokens, "
          f"LoRA rank {config.model.lora.rank}, remat {config.model.remat_policy}, compute {config.model.dtype}, "
          f"params {config.model.param_dtype}; {flops_per_row / 1e12:.2f} TFLOP a training row")
    print(header)
    for name in targets:
      hw = HARDWARE[name]
      cap = hw.hbm_bytes * (1 - args.hbm_margin)
      plans = []
      for label, spec in candidates(config, hw):
        plan = plan_candidate(compiler, hw, spec, cap=cap, flops_per_row=flops_per_row, max_rows=args.max_rows,
                              mfu=args.mfu, quick=args.quick)
        plans.append(dict(plan, candidate=label))
      chosen = choose(plans, hw)
      for p in plans:
        if "mesh" not in p:
          print(f"{preset:<10} {name:<9} {p['candidate']:<34} {p['rejected']}")
          continue
        mesh = ",".join(map(str, p["mesh"]))
        if "rejected" in p:
          print(f"{preset:<10} {name:<9} {p['candidate']:<34} {mesh:>12}  rejected: {p['rejected']}")
          continue
        ms = lambda s: f"{s * 1e3:.1f}"  # noqa: E731
        bound = "compute" if p["compute_s"] >= p["comm_s"] else "comm"
        xla = sum(p["collectives"].values())
        peak = ("~" if p["peak_estimated"] else "") + f"{p['peak'] / GIB:.1f}"
        mark = " <" if p is chosen else ""
        print(f"{preset:<10} {name:<9} {p['candidate']:<34} {mesh:>12} {p['rows']:>4} {p['global_batch']:>5} "
              f"{peak:>8} {ms(p['compute_s']):>8} {ms(p['fsdp_s']):>7} {ms(p['tensor_s']):>7} {ms(p['data_s']):>7} "
              f"{ms(p['step_s']):>8} {ms(p['step_sum_s']):>7} {bound:>7} {p['comm_bytes'] / 1e9:>8.2f} "
              f"{f'{xla / 1e9:.2f}' if p['compiled_rows'] == p['rows'] else '-':>7}{mark}", flush=True)
      if chosen:
        mfu_bound = chosen["compute_s"] / chosen["step_s"] * args.mfu
        print(f"  -> {preset} on {name}: {chosen['candidate']}, mesh {chosen['mesh']}, {chosen['rows']} rows a shard, "
              f"global batch {chosen['global_batch']}: ~{chosen['step_s'] * 1e3:.0f} ms a step "
              f"({'compute' if chosen['compute_s'] >= chosen['comm_s'] else 'communication'}-bound, "
              f"{chosen['rows_per_s']:.0f} rows/s, MFU <= {mfu_bound:.0%}); "
              f"--config.{' --config.'.join(overrides(chosen, hw).split())}")
      else:
        print(f"  -> {preset} on {name}: no candidate fits {cap / GIB:.1f} GiB a chip")
      records.append(dict(preset=preset, target=name, hbm_cap_bytes=cap, flops_per_row=flops_per_row,
                          plans=plans, chosen=chosen and chosen["candidate"],
                          overrides=chosen and overrides(chosen, hw)))
  seconds = time.perf_counter() - start
  print(f"\n{sum(len(r['plans']) for r in records)} candidates, {seconds:.0f} s; step times are lower bounds "
        "(no latency, perfect overlap).")
  if args.json:
    print(json.dumps(dict(estimate=True, hardware={t: dataclasses.asdict(HARDWARE[t]) for t in targets},
                          mfu=args.mfu, hbm_margin=args.hbm_margin, seconds=seconds, results=records), default=str))


if __name__ == "__main__":
  main()
