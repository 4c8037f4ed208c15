"""Test set-up: 8 forced CPU devices (set before jax is imported) and a tiny VCLR config."""

import atexit
import os
import shutil
import socket
import sys
import tempfile

# The suite's time goes into compiling tiny train steps. Measured on 2 cores (2026-12-04, the
# 2-device tiny step of test_train_step): at backend optimisation level 0 without LLVM's
# expensive passes XLA compiles the step in 14 s (24 s without level 0) and the state's
# initialisation, all threefry, in 4 s (22 s); steps run slower (float32 0.46 s against
# 0.24 s; float64 5.9 s against 0.66 s: float64 convolutions are XLA's own loops). Without the
# CPU fusion emitters (2026-12-05, back to back, no cache) the step compiles in 12.9 s instead
# of 16.2 s and the state initialises in 9.1 s instead of 14.4 s; three float32 steps take
# 2.04 s instead of 1.54 s, and the float64 8-device step the same 6.2 s. The suite runs few
# steps per compile, so it takes all three.
_CHEAP_PASSES = '--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false'
FAST_COMPILE_FLAGS = f'--xla_backend_optimization_level=0 {_CHEAP_PASSES}'
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}')
# The learning runs (over a hundred steps) train in a process of their own at XLA's default
# optimisation level (tests/training_run.py). Measured 2026-12-06 on 2 cores, 8 CPU devices,
# tiny_config at batch 16 without the blur: 0.23 CPU-seconds a step instead of 1.3, for about
# 15 s more to compile the step.
LONG_RUN_XLA_FLAGS = f'--xla_force_host_platform_device_count=8 {_CHEAP_PASSES}'
# Many tests (and the CLI runs they start as subprocesses, which inherit the environment)
# compile the same tiny train step; a compilation cache shared by the test run compiles it once.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='vclr_jax_test_compilations_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache_dir
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS_DIR))

import pytest  # noqa: E402

import pip_dry_runs  # noqa: E402

from configs import demo  # noqa: E402


def tiny_config(**overrides):
  """configs/demo.py shrunk to a ResNet-10 of width 8 at 80 px on in-memory videos (a quick compile)."""
  config = demo.get_config()
  config.data.source = 'in_memory'
  config.data.in_memory_videos = 16
  config.data.image_size = 80
  config.data.frame_size = (96, 96)  # the in-memory videos' canvas
  config.batch_size = 8
  config.queue_size = 48
  config.num_epochs = 4
  config.optim.warmup_epochs = 1
  config.optim.base_lr = 0.1  # the reference's rule: the suite's learning margins were set at it
  config.model.depth = 10
  config.model.width_multiplier = 0.125
  config.model.shuffle_bn_groups_per_device = 2
  config.update_from_flattened_dict(overrides)
  return config


# The augmentation's blur (its gathered taps) dominates a tiny step at the backend optimisation
# level 0. Measured 2026-12-06 (augmentation of c6392fa) on 2 cores, one CPU device, tiny_config
# at batch 16: 11.9 CPU seconds a float32 step with the blur, 1.6 without; the CLI run of
# tests/test_stops.py (12 steps at batch 4) 71 CPU seconds with it, 30 without. Tests whose assertion is not about the
# augmentation leave it out; tests/test_augment.py checks the blur against torchvision and
# tests/test_train_step.py the step's crops, blur included, on 1 and 8 devices.
NO_BLUR = {'data.augment.blur_probability': 0.0}


def free_port():
  """A TCP port free on loopback now (for a coordinator or an emulator a test starts)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture
def config():
  return tiny_config()


# The longest files first: with --dist loadfile each file runs on one worker, and a long file
# scheduled last leaves the other worker idle. pytest-xdist would otherwise order the files by
# their number of tests, which put the one-test test_multiprocess.py last. Seconds in the suite
# from a fresh clone (2 workers, 2026-12-06, the sum of the file's tests among the 40 longest).
LONGEST_FILES = ('test_multiprocess.py',  # 132, two float64 processes
                 'test_synthetic_learning.py',  # 124, the ResNet and the tiny ViT learning runs
                 'test_stops.py',  # 117, every stop from the real CLI
                 'test_eval_end_to_end.py',  # 108
                 'test_train_step.py',  # 105
                 'test_notebook.py',  # 91
                 'test_plan.py',  # 79, libtpu compiles of the tiny step, cpu:4 searches
                 'test_resume_device_count.py',  # 78, three float64 CLI runs
                 'test_main.py',  # 68
                 'test_vit.py',  # 65
                 'test_divergence.py',  # 56
                 'test_multiprocess_stops.py',  # 43, two 2-process runs
                 'test_loop_stop.py',  # 43, two 2-process runs, one with a 35 s slower trace
                 'test_gcs_run.py',  # 35
                 'test_augment.py',  # 32 and many short tests
                 'test_bn_batching.py',  # 30
                 'test_clips.py',  # 25
                 'test_checkpointing.py',  # 23
                 'test_vit_eval.py',  # 18
                 'test_quiet_start.py',  # 17
                 'test_tfds.py',  # 17
                 'test_models_3d.py',
                 'test_input_damage.py')


def pytest_configure(config):
  if hasattr(config.option, 'loadscopereorder'):  # pytest-xdist's --no-loadscope-reorder
    config.option.loadscopereorder = False
  # In the controlling process (or a run without workers), before the workers start: they
  # inherit the variable that says where the pip resolutions write.
  if not hasattr(config, 'workerinput') and pip_dry_runs.ENV_VAR not in os.environ:
    if any(_runs_requirements_test(arg) for arg in config.args):
      out_dir = tempfile.mkdtemp(prefix='vclr_jax_pip_dry_runs_')
      atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
      os.environ[pip_dry_runs.ENV_VAR] = out_dir
      pip_dry_runs.start(out_dir)


def _runs_requirements_test(arg):
  path = os.path.abspath(arg.split('::')[0])
  requirements_test = os.path.join(TESTS_DIR, 'test_requirements.py')
  return requirements_test == path or requirements_test.startswith(path + os.sep)


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
  items.sort(key=rank)  # stable: the order inside a file stays
