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

import os

# Deviceless compiles need no accelerator backend: the CPU client counts FLOPs, libtpu and
# the CUDA plugin are loaded for their compilers only. Set before JAX reads its environment.
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
# libtpu asks the (absent) TPU VM's metadata for these and logs warnings without them; they
# do not change the topology it compiles for.
os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-8')
os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
# libtpu takes a machine-wide lock for the chips; a compile-only process uses none.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vclr_jax import batch as batch_layout  # noqa: E402
from vclr_jax import chips  # noqa: E402
from vclr_jax import cli_errors  # noqa: E402
from vclr_jax import config_checks  # noqa: E402
from vclr_jax import train_state as train_state_lib  # noqa: E402
from vclr_jax import train_step as train_step_lib  # noqa: E402
from vclr_jax.models import vit  # noqa: E402
from vclr_jax.models.resnet import STAGE_BLOCKS  # noqa: E402
from vclr_jax.models.vclr import has_batch_norm, vit_spec  # noqa: E402

K400_TRAIN_VIDEOS = 241_190
GPU_TARGETS = Path(__file__).parent / 'gpu_targets'
GPU_TARGET_FILES = {'h100': 'h100_sxm.txtpb', 'h200': 'h200_sxm.txtpb'}
GPUS_PER_NODE = 8
CUDA_INSTALL = 'pip install -r requirements-cuda.txt  (jax[cuda12]==0.10.2, 3.2 GB of wheels)'
TPU_INSTALL = 'pip install -r requirements.txt  (libtpu, 213 MB)'

# Cloud TPU slice shapes by chip count (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e).
SHAPES_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
             256: '16x16'}
SHAPES_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
             256: '4x8x8', 512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16', 4096: '16x16x16'}
# Chip generation -> (slice shapes, TensorCores per chip counted in Cloud names, libtpu options).
# v4 and v5p names count TensorCores (v4-32 is 16 chips); megacore makes a chip one device.
TPU_GENERATIONS = {
    'v4': (SHAPES_3D, 2, {'chip_config_name': 'megacore'}),
    'v5p': (SHAPES_3D, 2, {}),
    'v5e': (SHAPES_2D, 1, {}),
    'v6e': (SHAPES_2D, 1, {}),
}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all')
# Bytes a chip sends per byte of an operand: a ring all-reduce sends ~2x (reduce-scatter, then
# all-gather); an all-gather's operand is the chip's own part, sent on to each other chip.
SEND_FACTOR = {'all-reduce': 2.0, 'all-gather': 1.0, 'reduce-scatter': 1.0,
               'collective-permute': 1.0, 'all-to-all': 1.0}
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}

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


@dataclasses.dataclass(frozen=True)
class Target:
  """Where the step is compiled for."""
  name: str  # as the user wrote it
  platform: str  # 'tpu', 'cuda' or 'cpu'
  chip: str | None  # a key of chips.CHIPS; None for cpu:N
  topology: str  # libtpu's string, the CUDA 'slices x hosts x GPUs per host', or 'N'
  num_slices: int = 1
  options: tuple = ()  # extra keyword arguments of get_topology_desc


def known_topologies() -> str:
  names = []
  for generation, (shapes, cores, _) in TPU_GENERATIONS.items():
    names.append(', '.join(f'{generation}-{chips_ * cores}' for chips_ in shapes))
  return ('; '.join(names) + f"; libtpu's form {{v4,v5p,v5e,v6e}}:AxB[xC] (e.g. v5e:16x16); "
          f'{", ".join(f"{gpu}:N" for gpu in GPU_TARGET_FILES)} with N up to 8 or a multiple of '
          f'{GPUS_PER_NODE}; cpu:N')


def parse_topology(name: str, num_slices: int = 1) -> Target:
  """The Target a topology name stands for; UserError listing the known names otherwise."""
  unknown = cli_errors.UserError(
      f'--topology={name} is not a topology this tool knows.\nKnown: {known_topologies()}.')
  if num_slices < 1:
    raise cli_errors.UserError(f'--num_slices={num_slices} must be 1 or more.')
  match = re.fullmatch(r'(v4|v5p|v5e|v6e)-(\d+)', name)
  if match:
    generation, count = match.group(1), int(match.group(2))
    shapes, cores, options = TPU_GENERATIONS[generation]
    if count % cores or count // cores not in shapes:
      raise unknown
    return Target(name, 'tpu', generation, f'{generation}:{shapes[count // cores]}', num_slices,
                  tuple(options.items()))
  match = re.fullmatch(r'(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})', name)
  if match:
    generation = match.group(1)
    return Target(name, 'tpu', generation, name, num_slices,
                  tuple(TPU_GENERATIONS[generation][2].items()))
  if num_slices != 1:
    raise cli_errors.UserError(f'--num_slices={num_slices} is for TPU slices, not {name}: give '
                               'the GPU or CPU count in --topology instead.')
  match = re.fullmatch(r'(h100|h200):(\d+)', name)
  if match:
    count = int(match.group(2))
    if not (1 <= count <= GPUS_PER_NODE or count % GPUS_PER_NODE == 0):
      raise unknown
    hosts, per_host = (1, count) if count <= GPUS_PER_NODE else (count // GPUS_PER_NODE,
                                                                  GPUS_PER_NODE)
    return Target(name, 'cuda', match.group(1), f'1x{hosts}x{per_host}')
  match = re.fullmatch(r'cpu:(\d+)', name)
  if match and int(match.group(1)) >= 1:
    return Target(name, 'cpu', None, match.group(1))
  raise unknown


def target_devices(target: Target) -> list:
  """The abstract devices of the target (real CPU devices for cpu:N)."""
  if target.platform == 'cpu':
    count = int(target.topology)
    if jax.config.jax_num_cpu_devices < count and \
        'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
      jax.config.update('jax_num_cpu_devices', count)
    devices = jax.devices('cpu')
    if len(devices) < count:
      raise cli_errors.UserError(
          f'--topology={target.name}: this process has {len(devices)} CPU devices (XLA_FLAGS '
          '--xla_force_host_platform_device_count); raise it or ask for fewer.')
    return devices[:count]
  from jax.experimental import topologies
  if target.platform == 'tpu':
    if importlib.util.find_spec('libtpu') is None:
      raise cli_errors.UserError(f'--topology={target.name} compiles with libtpu, which is not '
                                 f'installed: {TPU_INSTALL}.')
    try:
      return topologies.get_topology_desc(target.topology, platform='tpu',
                                          num_slices=target.num_slices,
                                          **dict(target.options)).devices
    except Exception as error:  # libtpu's own refusal of a shape (INVALID_ARGUMENT)
      raise cli_errors.UserError(
          f'libtpu cannot make --topology={target.name}: {" ".join(str(error).split())[:300]}\n'
          f'Known: {known_topologies()}.') from error
  try:
    config_text = (GPU_TARGETS / GPU_TARGET_FILES[target.chip]).read_text()
    return topologies.get_topology_desc(platform='cuda', target_config=config_text,
                                        topology=target.topology).devices
  except Exception as error:  # no CUDA plugin: 'topology not implemented for cuda'
    if importlib.util.find_spec('jax_plugins.xla_cuda12') is None:
      raise cli_errors.UserError(f'--topology={target.name} compiles with the CUDA plugin, which '
                                 f'is not installed: {CUDA_INSTALL}.') from error
    raise


def planned_config(config: ml_collections.ConfigDict, num_chips: int, per_chip_batch: int,
                   num_videos: int) -> ml_collections.ConfigDict:
  """``config`` for the plan: the per-chip batch applied, and the data and init_from paths
  (files on the pod, not here) replaced by generated videos, which give the step the same
  batch layout (config.data.frame_size)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if per_chip_batch:
      config.batch_size = per_chip_batch * num_chips
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

def lowered_cost(lowered) -> dict[str, float]:
  """XLA's cost analysis of the lowered (unoptimised) per-device module on the CPU client.

  TPU and GPU executables are not asked: GPU ones report nothing and count cuDNN
  convolutions as 0 FLOPs; the CPU client's count of the same module works for any target.
  """
  from jax._src.lib import _jax  # the analysis Lowered.cost_analysis runs for CPU lowerings
  module = lowered.compiler_ir('hlo').as_hlo_module()
  return dict(_jax.hlo_module_cost_analysis(jax.devices('cpu')[0].client, module))


def _shape_bytes(text: str) -> list[int]:
  """Bytes of each array shape written in ``text`` (an HLO result type), in order."""
  shapes = re.findall(r'\b(' + '|'.join(DTYPE_BYTES) + r')\[([\d,]*)\]', text)
  return [DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
          for dtype, dims in shapes]


def count_collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """kind -> {'count', 'bytes'} of the collectives in an optimised HLO module's text.

  One per synchronous op or async -start (its -done is the same transfer). Bytes are the
  op's result per chip: what an all-reduce reduces (a combined all-reduce counts once, with
  all its arrays), what a permute or all-gather delivers. Async starts return (operands,
  results, context scalars): the results are the second half once the scalars are dropped.
  """
  found = {}
  pattern = re.compile(r'^\s*(?:ROOT )?%?[\w.-]+ = (.*?) (' + '|'.join(COLLECTIVES)
                       + r')(-start)?\(')
  for line in hlo_text.splitlines():
    match = pattern.match(line)
    if not match:
      continue
    result, kind, is_start = match.groups()
    sizes = _shape_bytes(result)
    if is_start and kind != 'all-reduce':
      sizes = [size for size, shape in zip(sizes, re.findall(r'\w+\[[\d,]*\]', result))
               if not re.fullmatch(r'[us]32\[\]', shape)]
      sizes = sizes[len(sizes) // 2:]
    entry = found.setdefault(kind, {'count': 0, 'bytes': 0})
    entry['count'] += 1
    entry['bytes'] += sum(sizes)
  return found


# Top-level HLO ops that move no HBM data of their own (names, views, markers).
NO_TRAFFIC_OPS = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast',
                  'after-all', 'partition-id', 'replica-id', 'opt-barrier')


def _operand_text(text: str) -> str:
  """``text`` (what follows an op's opening parenthesis) up to its closing one."""
  depth = 1
  for index, char in enumerate(text):
    depth += {'(': 1, ')': -1}.get(char, 0)
    if depth == 0:
      return text[:index]
  return text


def top_level_hbm_bytes(hlo_text: str) -> float:
  """Bytes the entry computation's ops read and write in an optimised module: every
  top-level op (a fusion, a library call such as a cuDNN convolution, a copy, a collective)
  reads its operands from HBM and writes its result there; fused intermediates stay on chip.
  """
  sizes, entry, in_entry = {}, [], False
  instruction = re.compile(r'\s*(?:ROOT )?(%?[\w.-]+) = (.*?) ([\w-]+)\((.*)$')
  for line in hlo_text.splitlines():
    if line.startswith('ENTRY'):
      in_entry = True
      continue
    if in_entry and line.startswith('}'):
      in_entry = False
    match = instruction.match(line)
    if not match:
      continue
    name, result, op, rest = match.groups()
    sizes[name] = sum(_shape_bytes(result))
    if in_entry and op not in NO_TRAFFIC_OPS and not op.endswith('-done'):
      entry.append((name, rest))
  total = 0
  for name, rest in entry:
    operands = re.findall(r'%?[\w.-]+', _operand_text(rest))
    total += sizes[name] + sum(sizes.get(operand, 0) for operand in operands)
  return float(total)


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
  cost = lowered_cost(lowered)
  # The HBM traffic of the compiled module's top-level ops, the same way for every target:
  # GPU executables report no cost analysis, and the TPU one's 'bytes accessed' counts
  # on-chip traffic too (18x the top-level bytes for the tests' tiny step).
  hlo_text = compiled.as_text()
  hbm_bytes, source = top_level_hbm_bytes(hlo_text), "compiled module's top-level ops"
  return Compiled(
      per_chip_batch=config.batch_size // mesh.size,
      memory=memory_figures(compiled.memory_analysis()), flops=float(cost['flops']),
      hbm_bytes=float(hbm_bytes), hbm_bytes_source=source,
      collectives=count_collectives(hlo_text),
      lower_seconds=lowered_at - start, compile_seconds=done - lowered_at)


def is_out_of_memory(error: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(error) or 'Ran out of memory' in str(error)


# --- The largest per-chip batch that fits ---------------------------------------------------

def search_max_batch(peak_of: Callable[[int], float | None], capacity: float, start: int,
                     known: dict[int, float | None] | None = None, limit: int = 1 << 14,
                     fixed_bytes: float = 0.0):
  """The largest batch b >= 1 with peak_of(b) <= capacity, and every batch tried.

  peak_of(b) is a compile (None: the compiler itself ran out of memory). The peak grows
  about linearly with the batch, so the next try is the line's crossing of the capacity,
  kept strictly inside the bracket (largest fit, smallest misfit). The line goes through
  the two measured peaks nearest the capacity or, with one, through it and fixed_bytes at
  batch 0 (the state, which does not grow with the batch); with neither it doubles or
  halves. Typically 2-3 compiles after the first.
  """
  tried = dict(known or {})
  fits = lambda b: tried[b] is not None and tried[b] <= capacity
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
    measured = sorted((x, tried[x]) for x in tried if tried[x] is not None)
    if len(measured) == 1 and fixed_bytes:
      measured.append((0, fixed_bytes))
    near = sorted(measured, key=lambda point: abs(point[1] - capacity))[:2]
    guess = None
    if len(near) == 2 and near[0][0] != near[1][0]:
      (b0, p0), (b1, p1) = near
      slope = (p1 - p0) / (b1 - b0)
      if slope > 0:
        guess = int(b0 + (capacity - p0) / slope)
    upper = high - 1 if high is not None else limit
    if guess is not None and guess <= low:
      guess = low + 1  # the line says low is the largest fit: check the one above it
    if guess is None or guess > upper:
      # No line, or one that points past the bracket (a compiler OOM has no peak to fit):
      # bisect the bracket, or double towards the limit.
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


def build_report(config, target: Target, num_hosts: int, num_chips: int, compiled: Compiled,
                 num_videos: int, capacity_gb: float | None, search=None) -> dict:
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
    tried = ', '.join(f'{b}: {"compiler OOM" if p is None else _gb(p)}'
                      for b, p in sorted(search['tried'].items()))
    lines.append(f"Largest per-chip batch that fits: {search['per_chip_batch']} "
                 f"({search['compiles']} compiles, {search['seconds']:.0f} s; peaks {tried})")
  return '\n'.join(lines)


def plan(config: ml_collections.ConfigDict, target: Target, *, per_chip_batch: int = 0,
         find_max_batch: bool = False, capacity_gb: float = 0.0,
         num_videos: int = K400_TRAIN_VIDEOS) -> dict:
  """Compiles main's step for ``target`` and returns the report (a JSON-able dict)."""
  devices = target_devices(target)
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
      try:
        return compile_step(candidate, devices, num_videos).memory['peak']
      except Exception as error:  # a TPU compile that does not fit the chip's HBM
        if is_out_of_memory(error):
          return None
        raise

    best, tried = search_max_batch(peak_of, capacity_gb * chips.GB, compiled.per_chip_batch,
                                   known={compiled.per_chip_batch: compiled.memory['peak']},
                                   fixed_bytes=compiled.memory['argument'],
                                   limit=num_videos // num_chips)  # one step per epoch
    search = {'per_chip_batch': best, 'tried': tried, 'compiles': len(tried) - 1,
              'seconds': time.perf_counter() - start,
              'capacity_bytes': capacity_gb * chips.GB}
  return build_report(resolved, target, num_hosts, num_chips, compiled, num_videos,
                      capacity_gb or None, search)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  target = parse_topology(FLAGS.topology, FLAGS.num_slices)
  report = plan(FLAGS.config, target, per_chip_batch=FLAGS.per_chip_batch,
                find_max_batch=FLAGS.find_max_batch, capacity_gb=FLAGS.hbm_capacity_gb,
                num_videos=FLAGS.num_videos)
  print(json.dumps(report, indent=1) if FLAGS.json else format_report(report))


if __name__ == '__main__':
  cli_errors.run(main)
