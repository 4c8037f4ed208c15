"""Paths anywhere: a short run whose workdir is a gs:// bucket, resumed from its
checkpoint there.

The bucket is a GCS emulator on loopback (gcp-storage-emulator, in memory, no network).
Orbax's TensorStore writes the checkpoint's arrays there through its own gcs driver; etils.epath
(Orbax's metadata, config.json, curves.png) goes there through gcsfs. TensorBoard's events
stay local (tests/gcs_emulated_run.py says why).
"""

import os
import socket
import subprocess
import sys
import time

import pytest
from gcsfs.core import GCSFileSystem  # not gcsfs' default class: see emulator_env

from conftest import FAST_COMPILE_FLAGS, NO_BLUR, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'vclr-test'
FLAGS = [
    f'--config={REPO}/configs/demo.py', f'--workdir=gs://{BUCKET}/run',
    '--config.data.source=in_memory', '--config.data.in_memory_videos=16',
    '--config.data.image_size=80', '--config.batch_size=8', '--config.queue_size=48',
    '--config.model.depth=10', '--config.model.width_multiplier=0.125',
    '--config.model.shuffle_bn_groups_per_device=2', '--config.optim.warmup_epochs=1',
    '--config.log_every_steps=1', '--config.checkpoint.every_steps=2',
    *[f'--config.{key}={value}' for key, value in NO_BLUR.items()],
]


@pytest.fixture
def emulator(tmp_path):
  port = free_port()
  with open(tmp_path / 'emulator.log', 'w') as log:  # the child keeps its own descriptor
    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'tests', 'gcs_emulator.py'), str(port), BUCKET],
        stdout=subprocess.DEVNULL, stderr=log)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      break
    except OSError:
      assert server.poll() is None and time.time() < deadline, (
          (tmp_path / 'emulator.log').read_text()[-3000:])
      time.sleep(0.2)
  yield f'http://127.0.0.1:{port}'
  server.terminate()
  server.wait(30)


def emulator_env(url):
  return {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs and google-cloud-storage (Orbax asks for the bucket)
      'TENSORSTORE_GCS_HTTP_URL': url,  # Orbax's arrays
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # TensorStore asks for no credentials
      'EPATH_USE_TF': '0',  # etils.epath through gcsfs, not TensorFlow's GCS client
      'FSSPEC_GS_TOKEN': 'anon',  # gcsfs looks for no credentials
      # gcsfs' default class asks Storage Control (gRPC over TLS) for the bucket's type, which
      # the emulator cannot answer: 60 s per call until it gives up.
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
  }


def run(url, cwd, events_dir, num_epochs):
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE_FLAGS, PYTHONUNBUFFERED='1', PYTHONPATH=REPO,
             **emulator_env(url))
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'tests', 'gcs_emulated_run.py'), str(events_dir),
       'vclr_jax.main', *FLAGS, f'--config.num_epochs={num_epochs}'],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout + done.stderr


def test_a_run_on_a_bucket_saves_resumes_and_writes_its_files_there(emulator, tmp_path):
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  first = run(emulator, cwd, tmp_path / 'events', num_epochs=2)  # 16 videos: 2 steps per epoch
  assert 'Resumed from' not in first
  second = run(emulator, cwd, tmp_path / 'events', num_epochs=3)
  assert f'Resumed from gs://{BUCKET}/run/checkpoints at step 4.' in second, second[-3000:]
  assert 'step 6/6' in second

  bucket = GCSFileSystem(endpoint_url=emulator, token='anon')
  run_files = {os.path.basename(p) for p in bucket.ls(f'{BUCKET}/run', refresh=True)}
  assert {'config.json', 'curves.png', 'checkpoints'} <= run_files, run_files
  assert '"num_epochs": 3' in bucket.cat(f'{BUCKET}/run/config.json').decode()
  assert bucket.cat(f'{BUCKET}/run/curves.png')[:8] == b'\x89PNG\r\n\x1a\n'
  steps = {os.path.basename(p) for p in bucket.ls(f'{BUCKET}/run/checkpoints', refresh=True)}
  assert {'4', '6'} <= steps, steps
  # The arrays are in the bucket (TensorStore's gcs driver), not in a local folder named "gs:".
  arrays = bucket.find(f'{BUCKET}/run/checkpoints/6')
  assert any('/d/' in path for path in arrays), arrays
  assert os.listdir(cwd) == []
