"""Throughput of the real VCLR train step on whatever devices are present.

  python benchmarks/train_step.py --config=configs/k400.py --config.batch_size=64 \
      --config.model.compute_dtype=bfloat16 --steps=20

Compiles the SPMD step of vclr_jax.train_step for the config, feeds it batches already in
device memory (random uint8 frames on the config.data.frame_size canvas, in the layout of
vclr_jax/batch.py; no TensorFlow, no input pipeline), and prints videos/s, frames/s through
each encoder (3 per video online, 6 per video through the EMA key encoder; clips/s for a 3D
config such as configs/ucf101_r3d.py, whose "frames" are clips), achieved
TFLOP/s with model FLOPs utilisation against the device's peak (FLOPs from XLA's cost
analysis of the step lowered for the host's CPU: flops_per_step), and the on-device
augmentation's share of the step: the seven crops and colour work of the same batch timed
alone, against the whole step.

  python benchmarks/train_step.py --config=configs/k400.py --aug_cost

prints the on-device augmentation's FLOPs and bytes accessed per video, from XLA's cost
analysis of the step's augmentation (the seven crops of --aug_cost_videos examples) compiled
alone for one host CPU device, and their ratio to the floor: the uint8 frames read once and the
crops written once. Nothing runs on the CPU; on an accelerator the step benchmark follows, with
the augmentation's measured share of the step. --aug_cost_against=OTHER/augment.py adds the
same figures for another version of vclr_jax/augment.py, compiled in the same run.
"""

import importlib.util
import inspect
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vclr_jax import augment  # noqa: E402
from vclr_jax import batch as batch_layout  # noqa: E402
from vclr_jax import chips  # noqa: E402
from vclr_jax import config_checks  # noqa: E402
from vclr_jax import compile_targets  # noqa: E402
from vclr_jax import train_state as ts  # noqa: E402
from vclr_jax import train_step as tstep  # noqa: E402
from vclr_jax.global_batches import to_global  # noqa: E402
from vclr_jax.models.resnet import accumulation_dtype  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/k400.py', 'Experiment config.')
flags.DEFINE_integer('steps', 20, 'Timed steps (after one compile-and-warm-up step).')
flags.DEFINE_integer('num_videos', 241_190, 'Dataset size for the schedule (K400 train).')
flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s of one device; 0 looks it up by device kind.')
flags.DEFINE_bool('aug_cost', False, "Print the augmentation's FLOPs and bytes per video (XLA's "
                  'cost analysis for the host CPU, nothing run) and their ratio to the floor; '
                  'on an accelerator, then run the step benchmark.')
flags.DEFINE_integer('aug_cost_videos', 8,
                     'Examples in the batch the augmentation is compiled for.')
flags.DEFINE_string('aug_cost_against', None, 'Another augment.py to count in the same run.')
flags.DEFINE_string('aug_cost_topology', 'cpu:1', "What --aug_cost compiles for: cpu:1 (XLA's "
                    'cost analysis), or one chip of a vclr_jax.plan --topology (v5e-8, h100:8: '
                    'the bytes its top-level ops move, compiled without the device).')
FLAGS = flags.FLAGS

def device_peak_tflops(dtype: str) -> float | None:
  if FLAGS.peak_tflops:
    return FLAGS.peak_tflops
  chip = chips.chip_of_device_kind(jax.devices()[0].device_kind)
  return chip.peak_tflops.get(dtype) if chip else None


def time_augmentation(config, mesh, batches) -> float:
  """Seconds per batch of the step's augmentation (crops and colour) compiled on its own."""
  augment_config = augment.AugmentConfig.from_config(config.data.augment)

  def on_device(batch):
    compute_dtype = ts.COMPUTE_DTYPES[config.model.compute_dtype]
    views = tstep.augmented_views(batch, jax.random.key(0), config.data.image_size,
                                  augment_config, accumulation_dtype(compute_dtype),
                                  compute_dtype, mesh.devices.flat[0].platform)
    # Reduced so that the timed work is the crops, not copying them out.
    return sum(jnp.sum(views[name]) for name in ('query_frames', 'key_frames', 'x1'))[None]

  fn = jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=P(tstep.DATA_AXIS),
                             out_specs=P(tstep.DATA_AXIS)))
  jax.block_until_ready(fn(batches[0]))
  start = time.perf_counter()
  for i in range(FLAGS.steps):
    out = fn(batches[i % 2])
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / FLAGS.steps


def augmentation_cost(config, videos: int, module=augment, device=None
                      ) -> dict[str, dict[str, float]]:
  """FLOPs and bytes per video of the step's augmentation for ``videos`` examples, compiled
  alone for one device (a host CPU one by default; nothing runs) in the step's augmentation
  dtype, with the floor: the example's uint8 frames read once and its crops written once.
  Bytes: XLA's cost analysis on a CPU; for an accelerator compiled without it, what the
  compiled module's top-level ops read and write (vclr_jax.plan's count of HBM traffic, equal
  to the cost analysis on a CPU), as its executables report no byte count of their own.

  'crops': ``module.augment_frames`` as the step calls it, all seven crops in one array;
  'views': the step's ``augmented_views``, which also slices them into the query tuple, the
  key tuple and x1 (copies, counted too).
  """
  augment_config = module.AugmentConfig.from_config(config.data.augment)
  compute_dtype = ts.COMPUTE_DTYPES[config.model.compute_dtype]
  dtype = accumulation_dtype(compute_dtype)
  mesh = tstep.make_mesh([device or jax.devices('cpu')[0]])
  platform = mesh.devices.flat[0].platform

  def augment_frames(*args):
    if 'platform' in inspect.signature(module.augment_frames).parameters:
      return module.augment_frames(*args[:7], platform)
    # An augment.py from before store_dtype and platform: crops cast afterwards, as its step
    # did, the platform picked where the step is lowered.
    return module.augment_frames(*args[:6]).astype(args[6] or args[5])

  shapes = batch_layout.batch_shapes(videos, tuple(config.data.frame_size),
                                     config.data.clip_length)
  split = NamedSharding(mesh, P(tstep.DATA_AXIS))
  batch = {name: jax.ShapeDtypeStruct(shape, dtype_, sharding=split)
           for name, (shape, dtype_) in shapes.items()}

  def crops(batch):
    # augmented_views' call, without its slicing into views.
    keys = tstep.crop_keys(jax.random.key(0), videos, batch_layout.NUM_FRAMES + 1)
    sources = jnp.concatenate([jnp.broadcast_to(jnp.arange(batch_layout.NUM_FRAMES),
                                                (videos, batch_layout.NUM_FRAMES)),
                               batch['anchor'][:, None]], axis=1).astype(jnp.int32)
    return augment_frames(batch['frames'], sources, keys, config.data.image_size,
                          augment_config, dtype, compute_dtype)

  def views(batch):
    # augmented_views calls the module under test.
    tstep.augment = types.SimpleNamespace(**{**vars(module), 'augment_frames': augment_frames})
    try:
      out = tstep.augmented_views(batch, jax.random.key(0), config.data.image_size,
                                  augment_config, dtype, compute_dtype, platform)
    finally:
      tstep.augment = augment
    return out['query_frames'], out['key_frames'], out['x1']

  results = {}
  for name, fn in (('crops', crops), ('views', views)):
    fn = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(tstep.DATA_AXIS),
                               out_specs=P(tstep.DATA_AXIS)))
    start = time.perf_counter()
    lowered = fn.lower(batch)
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    cost = compile_targets.lowered_cost(lowered)
    if mesh.devices.flat[0].platform == 'cpu':
      accessed = compiled.cost_analysis()
      accessed = (accessed[0] if isinstance(accessed, (list, tuple)) else accessed)
      accessed = accessed['bytes accessed']
    else:
      accessed = compile_targets.top_level_hbm_bytes(compiled.as_text())
    outputs = jax.tree.leaves(jax.eval_shape(fn, batch))
    frames = np.prod(shapes['frames'][0]) * np.dtype(shapes['frames'][1]).itemsize
    floor = (frames + sum(np.prod(o.shape) * o.dtype.itemsize for o in outputs)) / videos
    float32_floor = (frames + sum(np.prod(o.shape) * 4 for o in outputs)) / videos
    results[name] = dict(flops=float(cost['flops']) / videos,
                         bytes=float(accessed) / videos, floor=float(floor),
                         float32_floor=float(float32_floor),
                         compile_seconds=compile_seconds)
  return results


def print_augmentation_cost(config):
  versions = [('vclr_jax/augment.py', augment)]
  if FLAGS.aug_cost_against:
    spec = importlib.util.spec_from_file_location('augment_against', FLAGS.aug_cost_against)
    other = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = other  # its dataclasses look their module up
    spec.loader.exec_module(other)
    versions.append((FLAGS.aug_cost_against, other))
  target = compile_targets.parse_topology(FLAGS.aug_cost_topology)
  if target.platform != 'cpu':
    compile_targets.compile_only()
  device = compile_targets.target_devices(target)[0]
  counted = ("XLA's cost analysis" if target.platform == 'cpu'
             else "the compiled module's top-level ops")
  print(f'augmentation compiled alone for one chip of {target.name} ({device.platform}), '
        f'{FLAGS.aug_cost_videos} examples of {tuple(config.data.frame_size)} frames, '
        f'{config.data.image_size} px crops, {config.model.compute_dtype} step; bytes from '
        f'{counted}, per video (floor: the uint8 frames read once, the crops written once):')
  for name, module in versions:
    for level, cost in augmentation_cost(config, FLAGS.aug_cost_videos, module, device).items():
      what = ('augment_frames, the seven crops' if level == 'crops'
              else "augmented_views, with the step's slicing into views")
      against_float32 = ('' if cost['floor'] == cost['float32_floor'] else
                         f', {cost["bytes"] / cost["float32_floor"]:.1f}x the '
                         f'{cost["float32_floor"] / 1e6:.2f} MB of float32 crops')
      print(f'  {name}, {what}: {cost["flops"] / 1e9:.3f} GFLOP, '
            f'{cost["bytes"] / 1e6:.1f} MB accessed, {cost["bytes"] / cost["floor"]:.1f}x the '
            f'floor of {cost["floor"] / 1e6:.2f} MB{against_float32} '
            f'(compiled in {cost["compile_seconds"]:.1f} s)')


def flops_per_step(config) -> float:
  """FLOPs of one step over the global batch: XLA's cost analysis of it lowered for one CPU.

  On the host's CPU backend because GPU backends (PJRT plugins) analyse no lowered module
  and count the compiled module's cuDNN convolutions as 0 (0.205 of the 7.81 TFLOP of a
  batch-64 ResNet-50 step on an H200). One device running the global batch does the same
  arithmetic as D devices running a D-th each (1% apart at 8 devices, the collectives).
  """
  config = config.copy_and_resolve_references()
  cpu_mesh = tstep.make_mesh(jax.devices('cpu')[:1])
  tstep.resolve_shuffle_bn(config, 1)
  step, state, batch = tstep.abstract_step(config, cpu_mesh, FLAGS.num_videos)
  cost = step.lower(state, batch).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.aug_cost:
    print_augmentation_cost(config)
    if FLAGS.aug_cost_topology != 'cpu:1' or jax.default_backend() == 'cpu':
      return
  total_flops = flops_per_step(config)
  mesh = tstep.make_mesh()
  config_checks.check_divisibility(config, mesh.size)
  tstep.resolve_shuffle_bn(config, mesh.size)
  config_checks.check_queue_size(config)
  per_host = config.batch_size // jax.process_count()
  frame_size = tuple(config.data.frame_size)
  batches = [to_global(batch_layout.random_batch(per_host, frame_size, seed,
                                                config.data.clip_length), mesh)
             for seed in range(2)]
  create = jax.jit(lambda rng: ts.create_train_state(config, FLAGS.num_videos, rng),
                   out_shardings=NamedSharding(mesh, P()))
  state = create(jax.random.key(0))
  step = tstep.make_train_step(config, mesh, ts.make_optimizer(config, FLAGS.num_videos),
                               ts.learning_rate_schedule(config, FLAGS.num_videos))

  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_seconds = time.perf_counter() - start

  state, metrics = compiled(state, batches[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(FLAGS.steps):
    state, metrics = compiled(state, batches[i % 2])
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / FLAGS.steps

  augment_seconds = time_augmentation(config, mesh, batches)
  videos_per_sec = config.batch_size / seconds
  achieved = total_flops / seconds / 1e12
  peak = device_peak_tflops(config.model.compute_dtype)
  print(f'devices: {mesh.size} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'JAX {jax.__version__}')
  clips = config.data.clip_length > 1
  backbone = (config.model.architecture if clips else f'ResNet-{config.model.depth}')
  unit = 'clips' if clips else 'frames'
  print(f'model: {backbone} x{config.model.width_multiplier}, '
        f'{config.data.image_size} px crops of {tuple(config.data.frame_size)} frames'
        + (f', clips of {config.data.clip_length} frames at stride {config.data.clip_stride}'
           if clips else '') + f', {config.model.compute_dtype}, global batch '
        f'{config.batch_size}, online BN {config.model.online_bn}, key BN {config.model.key_bn}')
  print(f'compile: {compile_seconds:.1f} s; step: {seconds * 1e3:.1f} ms over {FLAGS.steps} steps')
  print(f'videos/s: {videos_per_sec:.1f}')
  print(f'{unit}/s: online encoder {3 * videos_per_sec:.1f}, key encoder '
        f'{6 * videos_per_sec:.1f}')
  mfu = f'{100 * achieved / (peak * mesh.size):.1f}% of {peak:.0f} TFLOP/s per device' if peak \
      else 'n/a (unknown device peak: pass --peak_tflops)'
  print(f'XLA FLOPs per step: {total_flops / 1e12:.3f} TFLOP; achieved {achieved:.2f} TFLOP/s; '
        f'MFU {mfu}')
  print(f'on-device augmentation: {augment_seconds * 1e3:.1f} ms per batch alone, '
        f'{100 * augment_seconds / seconds:.1f}% of the step (step without it: '
        f'{(seconds - augment_seconds) * 1e3:.1f} ms)')
  print(f'final loss {float(metrics["loss"]):.4f} (finite: {np.isfinite(float(metrics["loss"]))})')


if __name__ == '__main__':
  app.run(main)
