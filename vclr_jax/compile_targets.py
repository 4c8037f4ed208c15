"""Compiling for hardware that is not here: targets by name (TPU slices through libtpu, NVIDIA
nodes through the CUDA plugin's deviceless compile, cpu:N), their abstract devices, and what a
compiled module moves (the bytes of its top-level ops, its collectives).

vclr_jax.plan compiles the train step with it, benchmarks/train_step.py --aug_cost the
augmentation. A process that compiles for a TPU or GPU this way calls compile_only() first.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from pathlib import Path

import jax

from vclr_jax import cli_errors

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
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}


def compile_only() -> None:
  """Sets up this process to compile for absent accelerators; call before JAX starts a backend.

  No accelerator backend is started: the CPU client counts FLOPs, libtpu and the CUDA plugin
  are loaded for their compilers only.
  """
  jax.config.update('jax_platforms', 'cpu')
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  # libtpu asks the (absent) TPU VM's metadata for these and logs warnings without them; they
  # do not change the topology it compiles for.
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-8')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  # libtpu takes a machine-wide lock for the chips; a compile-only process uses none.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')


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


# --- What a compiled module does ----------------------------------------------------------

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


def lowered_cost(lowered) -> dict[str, float]:
  """XLA's cost analysis of the lowered (unoptimised) per-device module on the CPU client.

  TPU and GPU executables are not asked: GPU ones report nothing and count cuDNN
  convolutions as 0 FLOPs; the CPU client's count of the same module works for any target.
  """
  from jax._src.lib import _jax  # the analysis Lowered.cost_analysis runs for CPU lowerings
  module = lowered.compiler_ir('hlo').as_hlo_module()
  return dict(_jax.hlo_module_cost_analysis(jax.devices('cpu')[0].client, module))
