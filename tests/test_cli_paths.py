"""Paths anywhere: a run's config.json, evaluation feature cache, checkpoint
lookup, results table, pictures and PyTorch exports on a non-local filesystem that needs no
network.

TensorFlow's in-memory filesystem (ram://) stands in for gs://: the fixture registers the
scheme with etils.epath on its TensorFlow backend, the backend epath uses for gs:// whenever
TensorFlow is installed. Orbax's array data cannot go there (its TensorStore spec uses the
local 'file' driver for every scheme but gs://; docs/reliability.md), so the checkpoint itself
is not written to ram://; tests/test_gcs_run.py writes one to an emulated gs:// bucket.
"""

import json

import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath, register

from conftest import tiny_config
from vclr_jax import checkpointing
from vclr_jax.cli_errors import NoCheckpointError
from vclr_jax.evaluation import features

SCHEME = 'ram'


@pytest.fixture
def ram_root(monkeypatch):
  prefix = f'{SCHEME}://'
  monkeypatch.setattr(gpath, '_URI_PREFIXES', gpath._URI_PREFIXES + (prefix,))
  monkeypatch.setattr(gpath, '_URI_SCHEMES', gpath._URI_SCHEMES | {SCHEME})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, prefix, f'/{SCHEME}/')
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, SCHEME, backend.tf_backend)
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, prefix, gpath.PosixGPath)
  root = epath.Path(f'{prefix}vclr_test')
  assert str(root) == f'{prefix}vclr_test'
  yield root
  if root.exists():
    root.rmtree()


def test_run_config_feature_cache_and_checkpoint_lookup_on_ram(ram_root):
  import tensorflow as tf
  workdir = f'{ram_root}/run'
  assert checkpointing.absolute(workdir) == epath.Path(workdir)  # a URL stays a URL
  config = tiny_config()
  checkpointing.write_run_config(workdir, config)
  assert tf.io.gfile.exists(f'{workdir}/config.json')  # really on TensorFlow's filesystem
  assert checkpointing.load_run_config(workdir).to_dict() == json.loads(
      config.to_json_best_effort())

  rows = np.arange(12, dtype=np.float32).reshape(3, 4)
  calls = []

  def extract():
    calls.append(1)
    return {'features': rows, 'labels': np.array([0, 1, 0])}

  path = features.cache_path(workdir, 'test', 'step5')
  assert str(path) == f'{workdir}/eval/features_test_step5.npz'
  first = features.load_or_extract(path, {'step': 5}, extract, log=lambda line: None)
  again = features.load_or_extract(path, {'step': 5}, extract, log=lambda line: None)
  assert len(calls) == 1 and tf.io.gfile.exists(str(path))
  np.testing.assert_array_equal(again['features'], rows)
  np.testing.assert_array_equal(again['labels'], first['labels'])
  assert not tf.io.gfile.exists(f'{path}.tmp')

  with pytest.raises(NoCheckpointError, match='holds no checkpoint'):
    checkpointing.load_encoder_variables(workdir)
  tf.io.gfile.makedirs(f'{workdir}/checkpoints/7')
  tf.io.gfile.makedirs(f'{workdir}/checkpoints/9.orbax-checkpoint-tmp')  # unfinished: ignored
  assert sorted(checkpointing.step_dirs(f'{workdir}/checkpoints')) == [7]
  with pytest.raises(NoCheckpointError, match=r'pick one of the steps \[7\]'):
    checkpointing.load_encoder_variables(workdir, step=9)


def test_encoder_checkpoint_found_from_run_step_and_orbax_folders(tmp_path):
  tree = {'params': {'w': np.arange(3.0)}, 'batch_stats': {'m': np.ones(2)}, 'step': np.int32(5)}
  manager = checkpointing.make_manager(str(tmp_path / 'run'), tiny_config().checkpoint)
  checkpointing.save(manager, 5, tree, force=True)
  manager.wait_until_finished()
  for path, step in ((tmp_path / 'run', None), (tmp_path / 'run', 5),
                     (tmp_path / 'run' / 'checkpoints' / '5', None)):
    variables, found = checkpointing.load_encoder_variables(str(path), step)
    assert found == 5
    np.testing.assert_array_equal(variables['params']['w'], tree['params']['w'])
  with pytest.raises(NoCheckpointError, match='holds no checkpoint'):
    checkpointing.load_encoder_variables(str(tmp_path))  # a folder without any


@pytest.mark.parametrize('fmt', ['torchvision', 'safetensors'])
def test_export_results_and_pictures_on_ram(ram_root, fmt, capsys):
  import tensorflow as tf
  from test_interop import metadata, random_variables, assert_backbone_equal
  from vclr_jax.export import export_and_verify
  from vclr_jax.evaluation import pictures, results
  from vclr_jax.interop import load_pytorch_variables
  from vclr_jax.models.vclr import VCLR

  model = VCLR(depth=18, width_multiplier=0.25)
  variables = random_variables(model, seed=1)
  out = f'{ram_root}/exports/encoder.{"safetensors" if fmt == "safetensors" else "pth"}'
  # Written, then read back by the export's own check, through TensorFlow's filesystem.
  verification = export_and_verify(variables, out, fmt, metadata(18, 0.25), image_size=48)
  assert tf.io.gfile.exists(out) and verification.max_abs_difference < 1e-4
  assert_backbone_equal(load_pytorch_variables(out, random_variables(model, seed=2)), variables)
  capsys.readouterr()

  workdir = f'{ram_root}/run'
  entry = dict(protocol='linear', dataset='synthetic', split='test', checkpoint_step=8,
               metrics={'top1': 0.5}, settings={})
  table = results.record(workdir, entry)
  assert '| linear | synthetic | test | 8 | top1 50.0 |' in table
  assert json.loads(tf.io.gfile.GFile(f'{workdir}/eval/results.json').read()) == [entry]
  assert table in tf.io.gfile.GFile(f'{workdir}/eval/results.md').read()

  picture = f'{workdir}/eval/retrieval.png'
  thumbnails = np.zeros((2, 8, 8, 3), np.uint8)
  pictures.retrieval_picture(picture, thumbnails, np.array([0, 1]), thumbnails[:, None],
                             np.array([[0], [0]]))
  assert tf.io.gfile.GFile(picture, 'rb').read()[:8] == b'\x89PNG\r\n\x1a\n'

  from vclr_jax import visualize
  frames = np.full((2, 12, 16, 3), 90, np.uint8)
  maps = np.linspace(0, 1, 2 * 12 * 16).reshape(2, 12, 16)
  grid = visualize.write_pictures(f'{workdir}/gradcam', frames, [visualize.Row(
      'encoder', 'a stand-in', 'gradcam', maps, np.array([0.5, 0.25]))])
  assert grid == f'{workdir}/gradcam/{visualize.GRID_FILENAME}'
  written = sorted(tf.io.gfile.listdir(f'{workdir}/gradcam'))
  assert written == sorted([visualize.GRID_FILENAME, 'frame_0.png', 'frame_1.png',
                            'encoder_gradcam_0.png', 'encoder_gradcam_1.png',
                            'encoder_overlay_0.png', 'encoder_overlay_1.png'])
  from PIL import Image
  import io
  with Image.open(io.BytesIO(tf.io.gfile.GFile(f'{workdir}/gradcam/encoder_overlay_1.png',
                                               'rb').read())) as overlay:
    np.testing.assert_array_equal(np.asarray(overlay), visualize.overlay(frames[1], maps[1]))
