"""config.init_from: the online and key encoders start from a run, Orbax or PyTorch checkpoint."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from vclr_jax import checkpointing
from vclr_jax import train
from vclr_jax import train_state as ts
from vclr_jax.interop.exporting import export_encoder, export_metadata

NUM_VIDEOS = 16


def fresh_state(seed):
  return jax.device_get(ts.create_train_state(tiny_config(), NUM_VIDEOS, jax.random.key(seed)))


def test_init_from_run_directory_copies_the_whole_online_network(tmp_path):
  source = fresh_state(1)
  manager = checkpointing.make_manager(str(tmp_path), tiny_config().checkpoint)
  checkpointing.save(manager, 3, source, force=True)
  manager.wait_until_finished()
  loaded = train.load_initial_weights(str(tmp_path), fresh_state(2))
  for a, b in zip(jax.tree.leaves(loaded['params']), jax.tree.leaves(source.params)):
    np.testing.assert_array_equal(a, b)


def test_init_from_torchvision_file_fills_the_backbone_and_keeps_the_heads(tmp_path):
  source, target = fresh_state(1), fresh_state(2)
  path = str(tmp_path / 'r18.pth')
  config = tiny_config()
  export_encoder({'params': source.params, 'batch_stats': source.batch_stats}, path,
                 'torchvision', export_metadata(depth=config.model.depth, step=0, source='test',
                                                width_multiplier=config.model.width_multiplier))
  loaded = train.load_initial_weights(path, target)
  for a, b in zip(jax.tree.leaves(loaded['params']['backbone']),
                  jax.tree.leaves(source.params['backbone'])):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded['params']['inter_head']['fc0']['kernel'],
                                target.params['inter_head']['fc0']['kernel'])


def test_init_from_a_different_model_names_the_mismatch(tmp_path):
  source = jax.device_get(ts.create_train_state(
      tiny_config(**{'model.width_multiplier': 0.25}), NUM_VIDEOS, jax.random.key(1)))
  manager = checkpointing.make_manager(str(tmp_path), tiny_config().checkpoint)
  checkpointing.save(manager, 1, source, force=True)
  manager.wait_until_finished()
  with pytest.raises(ValueError, match='has shape'):
    train.load_initial_weights(str(tmp_path), fresh_state(2))
