"""Feature extraction: the same numbers on 8 devices as on 1, padding dropped, cache reuse."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from eval_fixtures import make_encoder_run
from vclr_jax import train_step
from vclr_jax.evaluation import features
from vclr_jax import augment
from vclr_jax.in_memory_data import make_videos
from vclr_jax.models.vclr import VCLR

NUM_VIDEOS, NUM_FRAMES, SIZE, BATCH = 11, 3, 48, 8


def _batches():
  """Eval-reader-shaped batches of in-memory uint8 videos, shuffled order, last batch padded."""
  frames = make_videos(NUM_VIDEOS, NUM_FRAMES, SIZE, seed=3)
  order = np.random.default_rng(0).permutation(NUM_VIDEOS)
  padded = -(-NUM_VIDEOS // BATCH) * BATCH
  pad = padded - NUM_VIDEOS
  all_frames = np.concatenate([frames[order], np.zeros((pad,) + frames.shape[1:], np.uint8)])
  labels = np.concatenate([order % 4, -np.ones(pad, int)]).astype(np.int32)
  index = np.concatenate([order, -np.ones(pad, int)]).astype(np.int32)
  mask = np.arange(padded) < NUM_VIDEOS
  return [dict(frames=all_frames[s:s + BATCH], label=labels[s:s + BATCH],
               video_index=index[s:s + BATCH], mask=mask[s:s + BATCH])
          for s in range(0, padded, BATCH)], frames


def test_eight_devices_give_the_features_of_one_device():
  assert jax.device_count() == 8
  # Computed in float64 so that only the cache's final rounding to float32 differs between
  # the paths: 8 vs 1 devices may then differ by one float32 ulp (at most 2^-23 relative), and
  # the plain float64 computation by half of one (2^-24); 1% on top covers float64 rounding.
  with jax.enable_x64(True):
    model = VCLR(depth=18, width_multiplier=0.125, dtype=jnp.float64)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 3, SIZE, SIZE, 3)), train=False)
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
    batches, frames = _batches()
    quiet = lambda line: None
    on_eight = features.extract_features(model, variables, batches, train_step.make_mesh(),
                                         thumbnail_size=8, log=quiet)
    on_one = features.extract_features(model, variables, batches,
                                       train_step.make_mesh(jax.devices()[:1]), log=quiet)
    # And both are the plain per-frame features averaged over the video's frames.
    normalised = (frames.reshape((-1, SIZE, SIZE, 3)) / 255.0 - np.array(augment.IMAGENET_MEAN)
                  ) / np.array(augment.IMAGENET_STD)
    direct = model.apply(variables, normalised, train=False, method='features').reshape(NUM_VIDEOS, NUM_FRAMES, -1).mean(1)
  np.testing.assert_array_equal(on_eight['video_index'], np.arange(NUM_VIDEOS))
  np.testing.assert_array_equal(on_eight['labels'], np.arange(NUM_VIDEOS) % 4)
  assert on_eight['features'].dtype == np.float32
  np.testing.assert_allclose(on_eight['features'], on_one['features'], rtol=1.01 * 2**-23, atol=0)
  np.testing.assert_allclose(on_eight['features'], direct, rtol=1.01 * 2**-24, atol=0)
  assert on_eight['thumbnails'].shape == (NUM_VIDEOS, 8, 8, 3)
  assert 'thumbnails' not in on_one


def test_cache_is_reused_and_invalidated_by_checkpoint_step_or_settings(tmp_path):
  config = tiny_config()
  workdir = make_encoder_run(tmp_path / 'run', config, steps=(1, 2))
  model = VCLR(depth=config.model.depth, width_multiplier=config.model.width_multiplier)
  batches, _ = _batches()
  calls = []

  def extractor(step):
    from vclr_jax import checkpointing
    variables, found = checkpointing.load_encoder_variables(workdir, step)
    assert found == step

    def extract():
      calls.append(step)
      return features.extract_features(model, variables, batches, train_step.make_mesh(),
                                       log=lambda line: None)
    return extract

  settings = dict(num_frames=NUM_FRAMES, step=1)
  path_1 = features.cache_path(workdir, 'test', 'step1')
  first = features.load_or_extract(path_1, settings, extractor(1), log=lambda line: None)
  again = features.load_or_extract(path_1, settings, extractor(1), log=lambda line: None)
  assert calls == [1] and os.path.exists(path_1)
  np.testing.assert_array_equal(first['features'], again['features'])
  # A new checkpoint step is another cache file and other features.
  path_2 = features.cache_path(workdir, 'test', 'step2')
  assert path_2 != path_1
  second = features.load_or_extract(path_2, dict(settings, step=2), extractor(2),
                                    log=lambda line: None)
  assert calls == [1, 2]
  assert not np.allclose(first['features'], second['features'])
  # Other settings for the same step are recomputed too.
  features.load_or_extract(path_1, dict(settings, num_frames=30), extractor(1),
                           log=lambda line: None)
  assert calls == [1, 2, 1]


def test_uneven_per_host_batch_is_refused_with_the_flag_to_change():
  model = VCLR(depth=18, width_multiplier=0.125)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 3, SIZE, SIZE, 3)), train=False)
  batches, _ = _batches()
  odd = [{name: value[:3] for name, value in batches[0].items()}]
  with pytest.raises(ValueError, match='config.data.batch_size'):
    features.extract_features(model, variables, odd, train_step.make_mesh(), log=print)
