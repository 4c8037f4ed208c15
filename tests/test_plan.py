"""vclr_jax.plan: main's step compiled for a TPU slice with libtpu (no TPU here), for cpu:N, and
its command line's errors, checked against what the step's code implies."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from vclr_jax import augment
from vclr_jax import chips
from vclr_jax import compile_targets
from vclr_jax import plan
from vclr_jax import train_state as train_state_lib
from vclr_jax import train_step as train_step_lib
from vclr_jax.models.resnet import ResNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CHIP = 2
TPU_SLICE = 'v5e:2x2'  # 4 chips
NUM_VIDEOS = 1000
# The tiny config of the suite from the command line.
TINY_FLAGS = ['--config=configs/demo.py', '--config.data.source=in_memory',
              '--config.data.in_memory_videos=16', '--config.data.image_size=80',
              '--config.data.frame_size=(96, 96)', '--config.queue_size=48',
              '--config.num_epochs=4', '--config.optim.warmup_epochs=1',
              '--config.model.depth=10', '--config.model.width_multiplier=0.125',
              '--config.model.shuffle_bn_groups_per_device=2']


def small_config():
  # Without the blur, whose FLOPs (every crop is filtered, half of them kept) outweigh a
  # width-8 network's; next to K400's ResNet-50 they are a fraction of a percent.
  return tiny_config(**{'data.augment.blur_probability': 0.0})


@pytest.fixture(scope='module')
def tpu_report():
  target = compile_targets.parse_topology(TPU_SLICE)
  return plan.plan(small_config(), target, per_chip_batch=PER_CHIP, num_videos=NUM_VIDEOS)


def conv_flops_from_jaxpr(config):
  """2 x multiply-adds of every convolution in the traced forward pass of one frame, and of
  the first one: from the shapes of the conv_general_dilated equations alone."""
  model = ResNet(depth=config.model.depth, width_multiplier=config.model.width_multiplier)
  size = config.data.image_size
  frame = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), frame)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, frame)
  flops = []
  for eqn in jaxpr.jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval.shape  # HWIO
      out = eqn.outvars[0].aval.shape  # NHWC
      flops.append(2 * math.prod(out) * math.prod(kernel[:3]))
  return float(sum(flops)), float(flops[0])


def augmentation_flops(config, platform='tpu'):
  """XLA's count of the FLOPs of one video's 7 crops lowered for ``platform``."""
  height, width = config.data.frame_size
  frames = jax.ShapeDtypeStruct((1, 6, height, width, 3), np.uint8)
  sources = jax.ShapeDtypeStruct((1, 7), np.int32)
  keys = augment.example_keys(jax.random.key(0), np.arange(1), 7)
  recipe = augment.AugmentConfig.from_config(config.data.augment)
  crops = jax.jit(lambda f, s, k: augment.augment_frames(f, s, k, config.data.image_size,
                                                         recipe, platform=platform))
  lowered = crops.trace(frames, sources, keys).lower(lowering_platforms=(platform,))
  return compile_targets.lowered_cost(lowered)['flops']


def test_tpu_slice_memory_is_reported(tpu_report):
  memory = tpu_report['memory_bytes']
  assert tpu_report['chips'] == 4 and tpu_report['per_chip_batch'] == PER_CHIP
  for name in ('argument', 'temp', 'peak', 'generated_code'):
    assert memory[name] > 0, name
  assert memory['peak'] >= memory['argument']  # XLA's own peak (not the sum of the parts)
  assert tpu_report['hbm_capacity_bytes'] == 16e9  # the v5e row of vclr_jax/chips.py
  assert tpu_report['hbm_headroom_bytes'] == 16e9 - memory['peak']


def test_tpu_slice_collectives_are_the_steps(tpu_report):
  config = small_config()
  shuffle = tpu_report['shuffle_bn_devices']
  assert shuffle == 4  # 6 x 2 key frames per chip over 4 chips
  permutes = tpu_report['collectives']['collective-permute']
  # One fused key pass: G - 1 parts of the frames out, the float32 features back. The frames
  # travel in float32 or, where the compiler moves the TPU convolution's bfloat16 rounding
  # before the permute, in bfloat16.
  key_frames = 6 * PER_CHIP
  size = config.data.image_size
  features = 8 * int(64 * config.model.width_multiplier)  # ResNet-10: 8 x the base width
  assert permutes['count'] == 2 * (shuffle - 1)
  part = key_frames // shuffle
  assert permutes['bytes'] in {(shuffle - 1) * part * (size * size * 3 * pixel + features * 4)
                               for pixel in (2, 4)}

  # The gradient of every parameter and the online and EMA BN statistics, in float32, are
  # all-reduced (XLA may combine them with the gathered keys and the metrics into one op).
  state = jax.eval_shape(lambda rng: train_state_lib.create_train_state(config, NUM_VIDEOS, rng),
                         jax.random.key(0))
  leaf_bytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  reduced = leaf_bytes(state.params) + 2 * leaf_bytes(state.batch_stats)
  keys = 4 * config.batch_size * config.model.embed_dim * 4  # k1, k2, k3 and the video key
  all_reduce = tpu_report['collectives']['all-reduce']
  assert all_reduce['count'] >= 1
  assert reduced <= all_reduce['bytes'] <= reduced + keys + 1024
  assert set(tpu_report['collectives']) == {'collective-permute', 'all-reduce'}


def test_tpu_slice_flops_are_the_models(tpu_report):
  config = small_config()
  forward, first = conv_flops_from_jaxpr(config)
  # The analytic count of the plan equals the traced convolutions.
  assert plan.resnet_forward_flops(10, 0.125, 80) == (forward, first)
  # 3 online frames forward and backward (no input gradient for the first layer), 6 key frames.
  per_video = 3 * (3 * forward - first) + 6 * forward
  assert tpu_report['gflop_per_video_model'] * 1e9 == pytest.approx(per_video)
  step = tpu_report['flops_per_step'] / PER_CHIP
  assert step == pytest.approx(tpu_report['gflop_per_video_step'] * 1e9)
  # Beside the network, a TPU step resamples the 7 crops with dense matrices: a tiny
  # network's FLOPs are of their order (K400's ResNet-50: 2%).
  assert abs((step - augmentation_flops(config)) / per_video - 1) < 0.10
  estimate = tpu_report['estimate']
  assert estimate['step_s'] >= estimate['compute_s'] == pytest.approx(
      tpu_report['flops_per_step'] / 197e12)
  assert estimate['chip_hours'] == pytest.approx(
      estimate['step_s'] * 4 * config.num_epochs * (NUM_VIDEOS // config.batch_size) / 3600)


def test_find_max_batch_fits_and_one_more_does_not():
  """The search over real compiles, on cpu:4 with a made-up capacity (a TPU compile of the
  same module takes minutes; the search's handling of compiler OOM is tested below)."""
  target = compile_targets.parse_topology('cpu:4')
  first = plan.plan(small_config(), target, per_chip_batch=PER_CHIP, num_videos=NUM_VIDEOS)
  capacity_gb = 2 * first['memory_bytes']['peak'] / 1e9
  report = plan.plan(small_config(), target, per_chip_batch=PER_CHIP, find_max_batch=True,
                     capacity_gb=capacity_gb, num_videos=NUM_VIDEOS)
  search = report['max_batch']
  best, peaks = search['per_chip_batch'], search['tried']  # per-chip batch -> compiled peak
  assert best > PER_CHIP
  assert peaks[best] <= capacity_gb * 1e9 < peaks[best + 1]
  assert search['compiles'] == len(peaks) - 1 <= 4


def test_search_max_batch_brackets_a_step_function():
  capacity = 1000.0
  peak_of = lambda b: 100.0 + 37.0 * b + (5.0 * b if b > 20 else 0.0)  # not quite linear
  best, tried = plan.search_max_batch(peak_of, capacity, 2)
  assert peak_of(best) <= capacity < peak_of(best + 1)
  assert len(tried) <= 6
  # From one compile, the line through it and the state's bytes at batch 0 points at the
  # answer: one compile there and one above it.
  best, tried = plan.search_max_batch(lambda b: 100.0 + 37.0 * b, capacity, 2,
                                      known={2: 174.0}, fixed_bytes=100.0)
  assert best == 24 and sorted(tried) == [2, 24, 25]
  # Compiler out-of-memory (None) counts as not fitting.
  best, tried = plan.search_max_batch(lambda b: None if b > 9 else 10.0 * b, 1e9, 1)
  assert best == 9 and len(tried) <= 20  # bisection of [1, 16384], not a walk down from it


def test_search_max_batch_through_a_plateau_to_the_compilers_limit():
  """XLA:TPU keeps a step under its HBM limit by scheduling, so near the limit the peaks stop
  growing and only the compiler's out-of-memory error, with the bytes it says the program
  needs, marks the end."""
  limit = 120
  peak_of = lambda b: (plan.OutOfMemory(0.8e9 + 0.135e9 * b) if b > limit
                       else min(0.8e9 + 0.135e9 * b, 15.6e9))
  best, tried = plan.search_max_batch(peak_of, 16e9, 32, fixed_bytes=0.8e9, limit=60_000)
  assert best == limit and limit + 1 in tried
  # The misfits' figures make the line: fewer compiles than bisecting without them.
  without_figures = lambda b: None if b > limit else peak_of(b)
  _, bisected = plan.search_max_batch(without_figures, 16e9, 32, fixed_bytes=0.8e9,
                                      limit=60_000)
  assert len(tried) < len(bisected)


def test_compiler_needs_reads_the_tpu_out_of_memory_message():
  error = RuntimeError('RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory '
                       'in memory space hbm. Used 16.31G of 15.75G hbm. Exceeded hbm capacity '
                       'by 575.00M.')
  assert plan.is_out_of_memory(error)
  assert plan.compiler_needs(error) == 16.31 * 2**30
  error = RuntimeError('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required '
                       'for HLO temporaries (36.00G) exceeds available HBM (15.75G).')
  assert plan.is_out_of_memory(error) and plan.compiler_needs(error) == 36 * 2**30
  assert plan.compiler_needs(RuntimeError('RESOURCE_EXHAUSTED: out of memory')) is None


def test_cpu_path_compiles_the_same_module(tpu_report):
  report = plan.plan(small_config(), compile_targets.parse_topology('cpu:4'),
                     per_chip_batch=PER_CHIP, num_videos=NUM_VIDEOS)
  assert report['platform'] == 'cpu' and report['chips'] == 4
  assert report['memory_bytes']['peak'] > 0
  # The FLOPs come from the lowered module: the same program as for 4 TPU chips but for the
  # augmentation's resampling (taps here, dense matrices there) and a few platform-specific
  # lowerings (0.02% of the FLOPs).
  config = small_config()
  network = lambda report, platform: (report['flops_per_step']
                                      - PER_CHIP * augmentation_flops(config, platform))
  assert network(report, 'cpu') == pytest.approx(network(tpu_report, 'tpu'), rel=1e-3)
  assert report['collectives']['collective-permute']['count'] == 2 * (4 - 1)
  assert 'estimate' not in report  # no chip figures for a CPU


@pytest.mark.parametrize('name, topology, chips', [
    ('v5e-256', 'v5e:16x16', 256), ('v4-32', 'v4:2x2x4', 16), ('v5p-128', 'v5p:4x4x4', 64),
    ('v6e-64', 'v6e:8x8', 64), ('v5e:4x8', 'v5e:4x8', 32)])
def test_cloud_tpu_names_map_to_libtpu_topologies(name, topology, chips):
  target = compile_targets.parse_topology(name)
  assert (target.platform, target.topology) == ('tpu', topology)
  assert len(compile_targets.target_devices(target)) == chips


def test_multislice_and_gpu_names():
  target = compile_targets.parse_topology('v5e-256', num_slices=2)
  devices = compile_targets.target_devices(target)
  assert len(devices) == 512 and len({d.slice_index for d in devices}) == 2
  mesh = train_step_lib.make_mesh(devices)  # main's mesh: slices are consecutive halves
  assert [d.slice_index for d in mesh.devices[:256]] == [0] * 256
  assert compile_targets.parse_topology('h100:64').topology == '1x8x8'
  assert compile_targets.parse_topology('h200:8').topology == '1x1x8'


def run_cli(module, *flags, env=None):
  env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
  env.pop('VCLR_DEBUG', None)
  return subprocess.run([sys.executable, '-m', module, *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_unknown_topology_lists_the_known_names():
  result = run_cli('vclr_jax.plan', *TINY_FLAGS, '--topology=v5e-12')
  assert result.returncode == 2, result.stderr
  assert '--topology=v5e-12 is not a topology this tool knows' in result.stderr
  for known in ('v5e-256', 'v4-32', 'v5p-128', 'v6e-64', 'h100:N', 'cpu:N', 'v5e:16x16'):
    assert known in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 5


def test_device_count_error_is_mains(tmp_path):
  """batch 12 does not divide over 8 chips: the plan stops with main's message on 8 devices."""
  flags = [*TINY_FLAGS, '--config.batch_size=12']
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  planned = run_cli('vclr_jax.plan', *flags, '--topology=cpu:8', env=env)
  trained = run_cli('vclr_jax.main', *flags, f'--workdir={tmp_path}/run', env=env)
  assert planned.returncode == trained.returncode == 2
  assert 'config.batch_size=12 must be divisible by the number of devices (8)' in planned.stderr
  assert planned.stderr.strip().splitlines() == trained.stderr.strip().splitlines()
  assert not (tmp_path / 'run').exists()


def test_plan_table_rows_are_the_reports(tpu_report, tmp_path):
  """scripts/plan_table.py, the README table's writer, on the slice's report as --json."""
  report = dict(tpu_report, max_batch={'per_chip_batch': 7, 'compiles': 3})
  path = tmp_path / 'v5e-4.json'
  path.write_text(json.dumps(report))
  result = subprocess.run([sys.executable, 'scripts/plan_table.py', str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  header, separator, row = result.stdout.strip().splitlines()
  cells = [cell.strip() for cell in row.strip('|').split('|')]
  assert len(cells) == header.count('|') - 1 == separator.count('---')
  estimate = tpu_report['estimate']
  hours_400 = estimate['chip_hours'] * 400 / estimate['epochs']
  assert cells[:5] == [
      f'{TPU_SLICE} (4 chips)', str(PER_CHIP),
      f"{tpu_report['memory_bytes']['peak'] / 1e9:.2f} / 16 GB", '7 (3 compiles)',
      f"{tpu_report['gflop_per_video_model']:.1f} / {tpu_report['gflop_per_video_step']:.1f}"]
  assert cells[6:8] == [f"{estimate['videos_per_s_per_chip']:,.0f}", f'{hours_400:,.0f}']
  # A second report of the topology, a search from 40 per chip, fills the first row's cell.
  searched = tmp_path / 'v5e-4-search.json'
  searched.write_text(json.dumps(dict(tpu_report, per_chip_batch=40,
                                      max_batch={'per_chip_batch': 41, 'compiles': 2})))
  plain = tmp_path / 'v5e-4-plain.json'
  plain.write_text(json.dumps(tpu_report))
  result = subprocess.run([sys.executable, 'scripts/plan_table.py', str(plain), str(searched)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  _, _, merged_row = result.stdout.strip().splitlines()
  cells = [cell.strip() for cell in merged_row.strip('|').split('|')]
  assert cells[1:4] == [str(PER_CHIP), f"{tpu_report['memory_bytes']['peak'] / 1e9:.2f} / 16 GB",
                        '41 (2 compiles from 40)']
  broken = tmp_path / 'broken.json'
  broken.write_text('{')
  result = subprocess.run([sys.executable, 'scripts/plan_table.py', str(broken)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and 'broken.json: not a report' in result.stderr


@pytest.mark.parametrize('device_kind, chip', [
    ('TPU v4', 'v4'), ('TPU v5 lite', 'v5e'), ('TPU v5', 'v5p'), ('TPU v6 lite', 'v6e'),
    ('NVIDIA H100 80GB HBM3', 'h100'), ('NVIDIA H200', 'h200'), ('NVIDIA A100-SXM4-80GB', 'a100'),
    ('cpu', None)])
def test_device_kinds_name_their_chips(device_kind, chip):
  """What jax.Device.device_kind says on each chip finds its row of the one chip table (the
  step benchmark's MFU reads the peak from there)."""
  found = chips.chip_of_device_kind(device_kind)
  assert found is (chips.CHIPS[chip] if chip else None)
