"""Plan a pod run on a CPU machine: compile vclr_jax.main's train step ahead of time for a TPU
slice, an NVIDIA node or cpu:N, and print per-chip memory, FLOPs, collectives, a roofline
estimate of the speed and the chip-hours of the run.

  python -m vclr_jax.plan --config=configs/k400.py --topology=v5e-256 --per_chip_batch=32
  python -m vclr_jax.plan --config=configs/k400.py --topology=v5e-256 --num_slices=2 --json
  python -m vclr_jax.plan --config=configs/k400.py --topology=h100:8 --find_max_batch

The step is the one main runs: the same config checks (config_checks.validate_config with the
topology's chip and host counts), make_train_step, the state's shapes from
jax.eval_shape(create_train_state) and the batch layout of vclr_jax/batch.py as abstract
arrays sharded over the mesh. Nothing is allocated and no accelerator is needed: libtpu
(requirements.txt) compiles for TPU topologies, the CUDA plugin (requirements-cuda.txt)
for GPU nodes. Topologies, columns and which figures are estimates: docs/pods.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from vclr_jax import batch as batch_layout
from vclr_jax import chips
from vclr_jax import cli_errors
from vclr_jax import compile_targets
from vclr_jax import config_checks
from vclr_jax import train_state as train_state_lib
from vclr_jax import train_step as train_step_lib
from vclr_jax.models import vit
from vclr_jax.models.resnet import STAGE_BLOCKS
from vclr_jax.models.vclr import has_batch_norm, vit_spec

compile_targets.compile_only()

K400_TRAIN_VIDEOS = 241_190
# Bytes a chip sends per byte of an operand: a ring all-reduce sends ~2x (reduce-scatter, then
# all-gather); an all-gather's operand is the chip's own part, sent on to each other chip.
SEND_FACTOR = {'all-reduce': 2.0, 'all-gather': 1.0, 'reduce-scatter': 1.0,
               'collective-permute': 1.0, 'all-to-all': 1.0}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Pretraining config file (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('topology', None, 'Cloud TPU slice (v5e-256, v4-32, v5p-128, v6e-64), '
                    "libtpu's form (v5e:16x16), an NVIDIA node (h100:8, h200:8, h100:64) or cpu:N.")
flags.DEFINE_integer('num_slices', 1, 'TPU multislice: this many slices of --topology.')
flags.DEFINE_integer('per_chip_batch', 0, 'Videos per chip; sets config.batch_size to this '
                     'times the chips (0: config.batch_size as given).')
flags.DEFINE_bool('find_max_batch', False, 'Also search the largest per-chip batch whose peak '
                  'HBM fits the chip (a few more compiles).')
flags.DEFINE_float('hbm_capacity_gb', 0.0, "Per-chip HBM in GB for the fit (0: the chip's).")
flags.DEFINE_integer('num_videos', K400_TRAIN_VIDEOS, 'Training videos per epoch (K400 train).')
flags.DEFINE_bool('json', False, 'Print the report as JSON instead of a table.')
flags.mark_flags_as_required(['config', 'topology'])


def planned_config(config: ml_collections.ConfigDict, num_chips: int, per_chip_batch: int,
                   num_videos: int) -> ml_collections.ConfigDict:
  """``config`` for the plan: the per-chip batch applied as ``batch_config`` applies it, and
  the data and init_from paths (files on the pod, not here) replaced by generated videos,
  which give the step the same batch layout (config.data.frame_size)."""
  if per_chip_batch:
    config = batch_config(config, num_chips, per_chip_batch)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.source = 'in_memory'
    config.data.in_memory_videos = max(num_videos, config.batch_size)
    config.init_from = ''
    config.require_init_from = False
  return config


# --- The model's own FLOPs, counted from its layer shapes -----------------------------------

def _conv_out(size: int, kernel: int, stride: int) -> int:
  pad = (kernel - 1) // 2  # the symmetric padding of vclr_jax/models/resnet.py
  return (size + 2 * pad - kernel) // stride + 1


def resnet_forward_flops(depth: int, width_multiplier: float, image_size: int
                         ) -> tuple[float, float]:
  """2 x multiply-adds of every convolution of one frame's forward pass through the ResNet,
  and of its first convolution alone (whose input, the data, needs no gradient)."""
  base = int(64 * width_multiplier)
  bottleneck = depth == 50
  size = _conv_out(image_size, 7, 2)
  flops = stem = 2 * size * size * 7 * 7 * 3 * base
  size = _conv_out(size, 3, 2)  # max-pool
  in_features = base
  for stage, num_blocks in enumerate(STAGE_BLOCKS[depth]):
    width = base * 2**stage
    out_features = 4 * width if bottleneck else width
    for index in range(num_blocks):
      stride = 2 if stage > 0 and index == 0 else 1
      out = _conv_out(size, 3, stride)
      if bottleneck:
        flops += 2 * size * size * in_features * width  # 1x1
        flops += 2 * out * out * 9 * width * width  # 3x3, strided
        flops += 2 * out * out * width * out_features  # 1x1
      else:
        flops += 2 * out * out * 9 * in_features * width + 2 * out * out * 9 * width * width
      if index == 0 and (stride != 1 or in_features != out_features):
        flops += 2 * out * out * in_features * out_features  # downsample 1x1
      size, in_features = out, out_features
  return float(flops), float(stem)


# architecture -> FLOPs of one frame's (or clip's) forward pass from config.model and the crop
# size, and the part of them in layers whose input gradient the backward pass skips.
FORWARD_FLOPS: dict[str, Callable[[ml_collections.ConfigDict, int], tuple[float, float]]] = {
    'resnet': lambda model, size: resnet_forward_flops(model.depth, model.width_multiplier, size),
    **{name: lambda model, size: vit.forward_flops(vit_spec(model), size)
       for name in vit.ARCHITECTURES},
}


def model_flops_per_video(config: ml_collections.ConfigDict) -> float | None:
  """The backbone's FLOPs per video in one step: the online encoder's frames forward and
  backward (3 x forward: the backward pass takes the gradients of the weights and of the
  input of every layer but the first) and the key encoder's 6 frames forward; None for an
  architecture without a count in FORWARD_FLOPS."""
  count = FORWARD_FLOPS.get(config.model.get('architecture', 'resnet'))
  if count is None:
    return None
  online_frames = batch_layout.NUM_SEGMENTS + (config.model.bn_batching == 'reference')  # + xq
  key_frames = batch_layout.NUM_FRAMES  # x1, x2, x3 and the key tuple
  forward, first_layer = count(config.model, config.data.image_size)
  return forward * (3 * online_frames + key_frames) - first_layer * online_frames


# --- What the compiler says --------------------------------------------------------------

@dataclasses.dataclass
class Compiled:
  per_chip_batch: int
  memory: dict[str, int]
  flops: float  # per chip and step, lowered module
  hbm_bytes: float  # per chip and step
  hbm_bytes_source: str
  collectives: dict[str, dict[str, float]]
  lower_seconds: float
  compile_seconds: float


def memory_figures(stats) -> dict[str, int]:
  memory = {name: int(getattr(stats, f'{name}_size_in_bytes'))
            for name in ('argument', 'output', 'alias', 'temp', 'generated_code')}
  # XLA's peak where the backend reports one, else its live-at-once bound.
  memory['peak'] = int(getattr(stats, 'peak_memory_in_bytes', 0)) or (
      memory['argument'] + memory['output'] - memory['alias'] + memory['temp']
      + memory['generated_code'])
  return memory


def compile_step(config: ml_collections.ConfigDict, devices, num_videos: int) -> Compiled:
  """Lowers and compiles main's train step for ``devices`` from abstract state and batch."""
  mesh = train_step_lib.make_mesh(devices)
  step, state, batch = train_step_lib.abstract_step(config, mesh, num_videos)
  start = time.perf_counter()
  lowered = step.lower(state, batch)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  done = time.perf_counter()
  cost = compile_targets.lowered_cost(lowered)
  # The HBM traffic of the compiled module's top-level ops, the same way for every target:
  # GPU executables report no cost analysis, and the TPU one's 'bytes accessed' counts
  # on-chip traffic too (18x the top-level bytes for the tests' tiny step).
  hlo_text = compiled.as_text()
  hbm_bytes = compile_targets.top_level_hbm_bytes(hlo_text)
  source = "compiled module's top-level ops"
  return Compiled(
      per_chip_batch=config.batch_size // mesh.size,
      memory=memory_figures(compiled.memory_analysis()), flops=float(cost['flops']),
      hbm_bytes=float(hbm_bytes), hbm_bytes_source=source,
      collectives=compile_targets.count_collectives(hlo_text),
      lower_seconds=lowered_at - start, compile_seconds=done - lowered_at)


def is_out_of_memory(error: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(error) or 'Ran out of memory' in str(error)


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
  """A batch the compiler itself refused for lack of HBM, and the bytes it said the program
  needs (None where its message gives no figure)."""
  needed: float | None = None


_BINARY_UNITS = {'': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


_NEEDS = (r'Used ([\d.]+)([KMGT]?)i?B? of [\d.]+[KMGT]?i?B? hbm',
          r'required for HLO temporaries \(([\d.]+)([KMGT]?)i?B?\) exceeds available HBM')


def compiler_needs(error: Exception) -> float | None:
  """The bytes XLA:TPU's out-of-memory error says the program needs ('Ran out of memory in
  memory space hbm. Used 16.31G of 15.75G hbm.', or 'the total memory required for HLO
  temporaries (36.00G) exceeds available HBM (15.75G)'; binary units), or None."""
  for pattern in _NEEDS:
    match = re.search(pattern, str(error))
    if match:
      return float(match.group(1)) * _BINARY_UNITS[match.group(2)]
  return None


# --- The largest per-chip batch that fits ---------------------------------------------------

def search_max_batch(peak_of: Callable[[int], float | OutOfMemory | None], capacity: float,
                     start: int, known: dict | None = None, limit: int = 1 << 14,
                     fixed_bytes: float = 0.0):
  """The largest batch b >= 1 with peak_of(b) <= capacity, and every batch tried.

  peak_of(b) is a compile: its peak, or OutOfMemory (None: without a figure) where the
  compiler itself ran out of memory. The peak grows about linearly with the batch, so the
  next try is the line's crossing of the capacity, kept strictly inside the bracket (largest
  fit, smallest misfit). The line goes through the two figures nearest the capacity or, with
  one, through it and fixed_bytes at batch 0 (the state, which does not grow with the batch).
  Near its limit XLA:TPU rematerialises and schedules the step to stay under it, so the fits'
  peaks stop growing: then the line goes through the bracket's ends, the largest fit and the
  bytes the compiler said the smallest misfit needs. With no line it doubles or bisects.
  Typically 2-3 compiles after the first.
  """
  tried = dict(known or {})
  figure = lambda v: v.needed if isinstance(v, OutOfMemory) else v
  fits = lambda b: not isinstance(tried[b], OutOfMemory) and tried[b] is not None and (
      tried[b] <= capacity)

  def crossing(points):
    (b0, p0), (b1, p1) = points
    slope = (p1 - p0) / (b1 - b0) if b1 != b0 else 0.0
    return int(b0 + (capacity - p0) / slope) if slope > 0 else None

  b = start
  while True:
    if b not in tried:
      tried[b] = peak_of(b)
    fitting = [x for x in tried if fits(x)]
    failing = [x for x in tried if not fits(x)]
    low = max(fitting, default=0)
    high = min((x for x in failing if x > low), default=None)
    if high == low + 1 or (high is None and low >= limit) or (low == 0 and high == 1):
      return low, tried
    measured = sorted((x, figure(tried[x])) for x in tried if figure(tried[x]) is not None)
    if len(measured) == 1 and fixed_bytes:
      measured.append((0, fixed_bytes))
    near = sorted(measured, key=lambda point: abs(point[1] - capacity))[:2]
    guess = crossing(near) if len(near) == 2 else None
    ends = [(x, figure(tried[x])) for x in (low, high) if x in tried]
    if guess is None and len(ends) == 2 and None not in (ends[0][1], ends[1][1]):
      guess = crossing(ends)
    upper = high - 1 if high is not None else limit
    if guess is not None and guess <= low:
      guess = low + 1  # the line says low is the largest fit: check the one above it
    if guess is None or guess > upper:
      # No line, or one that points past the bracket: bisect it, or double towards the limit.
      guess = (low + high) // 2 if high is not None else min(max(2 * low, 1), limit)
    b = guess


def batch_config(config: ml_collections.ConfigDict, num_chips: int, per_chip: int):
  """``config`` at ``per_chip`` videos per chip; the queue shrinks to a multiple of the new
  global batch if it has to (the step writes whole batches into it)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = per_chip * num_chips
    config.queue_size = max(1, config.queue_size // config.batch_size) * config.batch_size
    config.data.in_memory_videos = max(config.data.in_memory_videos, config.batch_size)
  return config


# --- The report ------------------------------------------------------------------------------

def roofline(compiled: Compiled, chip: chips.Chip, compute_dtype: str, num_slices: int,
             chips_per_slice: int) -> dict[str, float] | None:
  """Estimated seconds per step: max(FLOPs / peak, HBM bytes / bandwidth) + the bytes each
  chip sends in collectives / half its interconnect's two-way bandwidth; with several slices
  the gradient all-reduce's cross-slice share (a reduce-scatter inside the slice first) is
  added at the data-centre network's per-chip bandwidth."""
  peak = chip.peak_flops(compute_dtype)
  if peak is None:
    return None
  compute = compiled.flops / peak
  memory = compiled.hbm_bytes / (chip.hbm_gb_per_s * chips.GB)
  sent = sum(SEND_FACTOR[kind] * entry['bytes'] for kind, entry in compiled.collectives.items())
  network = sent / (chip.ici_gb_per_s / 2 * chips.GB)
  if num_slices > 1 and chip.dcn_gb_per_s:
    reduced = compiled.collectives.get('all-reduce', {}).get('bytes', 0)
    network += 2 * reduced / chips_per_slice / (chip.dcn_gb_per_s * chips.GB)
  return {'compute_s': compute, 'hbm_s': memory, 'network_s': network,
          'step_s': max(compute, memory) + network}


def build_report(config, target: compile_targets.Target, num_hosts: int, num_chips: int,
                 compiled: Compiled, num_videos: int, capacity_gb: float | None,
                 search=None) -> dict:
  chip = chips.CHIPS.get(target.chip)
  per_chip = compiled.per_chip_batch
  model = model_flops_per_video(config)
  step_per_video = compiled.flops / per_chip
  report = {
      'topology': target.name, 'platform': target.platform, 'compiled_for': target.topology,
      'num_slices': target.num_slices, 'chips': num_chips, 'hosts': num_hosts,
      'chip': chip.name if chip else 'CPU',
      'global_batch': config.batch_size, 'per_chip_batch': per_chip,
      'compute_dtype': config.model.compute_dtype,
      # A ViT has no BatchNorm, so its keys are not shuffled (0).
      'shuffle_bn_devices': (config.model.shuffle_bn_devices
                             if has_batch_norm(config.model.architecture) else 0),
      'memory_bytes': compiled.memory,
      'hbm_capacity_bytes': capacity_gb * chips.GB if capacity_gb else None,
      'flops_per_step': compiled.flops, 'gflop_per_video_step': step_per_video / 1e9,
      'gflop_per_video_model': model / 1e9 if model is not None else None,
      'step_overhead_fraction': 1 - model / step_per_video if model is not None else None,
      'hbm_bytes_per_step': compiled.hbm_bytes, 'hbm_bytes_source': compiled.hbm_bytes_source,
      'collectives': compiled.collectives,
      'lower_seconds': compiled.lower_seconds, 'compile_seconds': compiled.compile_seconds,
  }
  if capacity_gb:
    report['hbm_headroom_bytes'] = capacity_gb * chips.GB - compiled.memory['peak']
  estimate = roofline(compiled, chip, config.model.compute_dtype, target.num_slices,
                      num_chips // target.num_slices) if chip else None
  if estimate:
    steps_per_epoch = train_state_lib.steps_per_epoch(config, num_videos)
    run_seconds = config.num_epochs * steps_per_epoch * estimate['step_s']
    report['estimate'] = dict(
        estimate, videos_per_s_per_chip=per_chip / estimate['step_s'],
        epochs=config.num_epochs, steps_per_epoch=steps_per_epoch, num_videos=num_videos,
        chip_hours=run_seconds * num_chips / 3600, wall_hours=run_seconds / 3600,
        chip_source=chip.source)
  if search is not None:
    report['max_batch'] = search
  return report


def _gb(value: float) -> str:
  return f'{value / chips.GB:.2f} GB'


def _peak_text(peak: float | OutOfMemory) -> str:
  if not isinstance(peak, OutOfMemory):
    return f'peak {_gb(peak)}'
  return 'the compiler ran out of memory' + (
      f' (needs {_gb(peak.needed)})' if peak.needed is not None else '')


def format_report(report: dict) -> str:
  memory = report['memory_bytes']
  lines = [
      f"{report['topology']}: {report['chips']} x {report['chip']} ({report['platform']} "
      f"topology {report['compiled_for']}, {report['num_slices']} slice(s), "
      f"{report['hosts']} host(s))",
      f"batch {report['global_batch']} ({report['per_chip_batch']} per chip), "
      f"{report['compute_dtype']}, " + (
          f"shuffle-BN over {report['shuffle_bn_devices']} devices"
          if report['shuffle_bn_devices'] else 'no shuffle-BN'),
      'Per chip (compiled):',
      f"  HBM arguments (state + batch)  {_gb(memory['argument'])} "
      f"({_gb(memory['alias'])} donated to the output)",
      f"  HBM temporaries               {_gb(memory['temp'])}",
  ]
  peak = f"  HBM peak                      {_gb(memory['peak'])}"
  if report['hbm_capacity_bytes']:
    peak += (f" of {_gb(report['hbm_capacity_bytes'])} "
             f"({memory['peak'] / report['hbm_capacity_bytes']:.0%}; headroom "
             f"{_gb(report['hbm_headroom_bytes'])})")
  lines.append(peak)
  lines.append(f"  FLOPs per step                {report['flops_per_step'] / 1e12:.3f} TFLOP, "
               f"{report['gflop_per_video_step']:.1f} GFLOP per video")
  if report['gflop_per_video_model'] is not None:
    lines.append(f"  model's convolutions          {report['gflop_per_video_model']:.1f} GFLOP "
                 f"per video (analytic); step overhead {report['step_overhead_fraction']:.1%}")
  for kind, entry in sorted(report['collectives'].items()):
    lines.append(f"  {kind:<29} {entry['count']} per step, {entry['bytes'] / 1e6:.1f} MB")
  if not report['collectives']:
    lines.append('  collectives                   none')
  lines.append(f"  compile time                  {report['compile_seconds']:.0f} s "
               f"(lowering {report['lower_seconds']:.0f} s)")
  estimate = report.get('estimate')
  if estimate:
    lines += [
        'Estimate (roofline from the chip table, not a measurement):',
        f"  step >= max(compute {estimate['compute_s'] * 1e3:.1f} ms, HBM "
        f"{estimate['hbm_s'] * 1e3:.1f} ms) + network {estimate['network_s'] * 1e3:.1f} ms = "
        f"{estimate['step_s'] * 1e3:.1f} ms",
        f"  {estimate['videos_per_s_per_chip']:.0f} videos/s per chip; {estimate['epochs']} "
        f"epochs of {estimate['num_videos']:,} videos: {estimate['chip_hours']:,.0f} "
        f"chip-hours ({estimate['wall_hours']:.1f} h on {report['chips']} chips)",
        f"  chip figures: {estimate['chip_source']}; HBM traffic from the "
        f"{report['hbm_bytes_source']}",
    ]
  search = report.get('max_batch')
  if search:
    needs = search.get('compiler_needs', {})
    tried = ', '.join(f'{b}: {_peak_text(OutOfMemory(needs.get(b)) if p is None else p)}'
                      for b, p in sorted(search['tried'].items()))
    lines.append(f"Largest per-chip batch that fits: {search['per_chip_batch']} "
                 f"({search['compiles']} compiles, {search['seconds']:.0f} s): {tried}")
  return '\n'.join(lines)


def plan(config: ml_collections.ConfigDict, target: compile_targets.Target, *,
         per_chip_batch: int = 0, find_max_batch: bool = False, capacity_gb: float = 0.0,
         num_videos: int = K400_TRAIN_VIDEOS) -> dict:
  """Compiles main's step for ``target`` and returns the report (a JSON-able dict)."""
  devices = compile_targets.target_devices(target)
  num_chips = len(devices)
  num_hosts = len({device.process_index for device in devices})
  config = planned_config(config, num_chips, per_chip_batch, num_videos)
  config_checks.validate_config(config, num_chips, num_hosts)
  # The automatic (0) shuffle-BN settings resolved as main does, on a copy: a search over
  # batches resolves them again for each batch.
  resolved = config.copy_and_resolve_references()
  train_step_lib.resolve_shuffle_bn(resolved, num_chips)
  compiled = compile_step(resolved, devices, num_videos)
  chip = chips.CHIPS.get(target.chip)
  capacity_gb = capacity_gb or (chip.hbm_gb if chip else 0.0)
  search = None
  if find_max_batch:
    if not capacity_gb:
      raise cli_errors.UserError(f'--find_max_batch on {target.name} needs --hbm_capacity_gb '
                                 '(a CPU has no HBM of its own).')
    start = time.perf_counter()

    def peak_of(per_chip: int) -> float | None:
      candidate = batch_config(config, num_chips, per_chip)
      config_checks.validate_config(candidate, num_chips, num_hosts)
      train_step_lib.resolve_shuffle_bn(candidate, num_chips)
      started = time.perf_counter()
      try:
        peak = compile_step(candidate, devices, num_videos).memory['peak']
      except Exception as error:  # a TPU compile that does not fit the chip's HBM
        if not is_out_of_memory(error):
          raise
        peak = OutOfMemory(compiler_needs(error))
      # Each compile of a large step takes minutes: say how the search goes.
      print(f'--find_max_batch: {per_chip} per chip: {_peak_text(peak)} '
            f'({time.perf_counter() - started:.0f} s)', file=sys.stderr, flush=True)
      return peak

    best, tried = search_max_batch(peak_of, capacity_gb * chips.GB, compiled.per_chip_batch,
                                   known={compiled.per_chip_batch: compiled.memory['peak']},
                                   fixed_bytes=compiled.memory['argument'],
                                   limit=num_videos // num_chips)  # one step per epoch
    search = {'per_chip_batch': best, 'compiles': len(tried) - 1,
              'tried': {b: None if isinstance(p, OutOfMemory) else p for b, p in tried.items()},
              'compiler_needs': {b: p.needed for b, p in tried.items()
                                 if isinstance(p, OutOfMemory)},
              'seconds': time.perf_counter() - start,
              'capacity_bytes': capacity_gb * chips.GB}
  return build_report(resolved, target, num_hosts, num_chips, compiled, num_videos,
                      capacity_gb or None, search)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  target = compile_targets.parse_topology(FLAGS.topology, FLAGS.num_slices)
  report = plan(FLAGS.config, target, per_chip_batch=FLAGS.per_chip_batch,
                find_max_batch=FLAGS.find_max_batch, capacity_gb=FLAGS.hbm_capacity_gb,
                num_videos=FLAGS.num_videos)
  print(json.dumps(report, indent=1) if FLAGS.json else format_report(report))


if __name__ == '__main__':
  cli_errors.run(main)
