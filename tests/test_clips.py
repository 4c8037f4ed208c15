"""VCLR on clip tuples (the paper's Sec. 5): clip sampling in both readers, one augmentation
draw per clip, the 3D train step on 8 devices against 1, the clip configs' checks, the step
learning-rate schedule and the export of a 3D run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import demo_r3d
from configs import ucf101_r3d
from configs import ucf101_s3d
from conftest import NO_BLUR, tiny_config
from input_pipeline import eval_reader
from input_pipeline import prepare
from input_pipeline import record_stream
from input_pipeline import train_reader
from input_pipeline import tsn_reader
from input_pipeline import vclr_sampling
from vclr_jax import augment
from vclr_jax import batch as batch_layout
from vclr_jax import checkpointing
from vclr_jax import config_checks
from vclr_jax import train_state as ts
from vclr_jax import train_step as tstep
from vclr_jax import visualize
from vclr_jax.cli_errors import ConfigError, UserError
from vclr_jax.export import export_run
from vclr_jax.global_batches import to_global
from vclr_jax.in_memory_data import InMemoryVideos, sample_frame_indices
from vclr_jax.interop.exporting import metadata_path

# (clip_length, clip_stride) pairs: dense, strided, and a span that fills short segments.
CLIP_SHAPES = ((2, 1), (2, 3), (3, 2), (4, 1))
CODED_LENGTHS = (18, 19, 25, 31)  # at least min_video_frames(2, 2) = 18
FRAME_SIZE = (32, 40)


def check_clips(query, key, length, clip_length, clip_stride):
  """query, key: (3, L) frame indices of one example's clips in a video of ``length`` frames."""
  bounds = [0, length // 3, 2 * (length // 3), length]
  steps = clip_stride * np.arange(clip_length)
  for segment in range(3):
    for clip in (query[segment], key[segment]):
      np.testing.assert_array_equal(clip - clip[0], steps)
      assert bounds[segment] <= clip[0] and clip[-1] < bounds[segment + 1], (clip, bounds)
    assert not set(query[segment]) & set(key[segment]), (query, key)


def test_tf_sampler_clips_lie_in_their_segment_and_never_share_a_frame():
  draws = 1200
  for clip_length, clip_stride in CLIP_SHAPES:
    shortest = batch_layout.min_video_frames(clip_length, clip_stride)
    lengths = np.array([shortest, shortest + 1, shortest + 2, 2 * shortest + 5])
    picked = (tf.data.Dataset.range(draws)
              .map(lambda i, shape=(clip_length, clip_stride), lengths=lengths:
                   vclr_sampling.sample_vclr_indices(
                       tf.gather(lengths, i % len(lengths)),
                       tf.random.experimental.stateless_fold_in(tf.constant([5, 0], tf.int64),
                                                                i), *shape))
              .batch(draws).get_single_element())
    clips = {name: vclr_sampling.clip_frame_indices(picked[name], clip_length,
                                                    clip_stride).numpy()
             for name in ('query_indices', 'key_indices')}
    for i, (query, key) in enumerate(zip(clips['query_indices'], clips['key_indices'])):
      check_clips(query, key, lengths[i % len(lengths)], clip_length, clip_stride)
    # Every start that fits gets drawn: in the longest videos' last segment (length n), both
    # clips take each of the n - span + 1 starts.
    longest = lengths[-1]
    last_segment = longest - 2 * (longest // 3)
    fits = last_segment - batch_layout.clip_span(clip_length, clip_stride) + 1
    for name in ('query_indices', 'key_indices'):
      assert len(set(picked[name].numpy()[len(lengths) - 1::len(lengths), 2])) == fits, name
  with pytest.raises(tf.errors.InvalidArgumentError, match='--min_frames=18'):
    vclr_sampling.sample_vclr_indices(17, tf.constant([0, 0], tf.int64), 2, 2)


def test_in_memory_sampler_follows_the_same_rules():
  for clip_length, clip_stride in CLIP_SHAPES:
    shortest = batch_layout.min_video_frames(clip_length, clip_stride)
    for length in (shortest, shortest + 2, 2 * shortest + 5):
      for seed in range(100):
        key, query, anchor = sample_frame_indices(length, np.random.default_rng(seed),
                                                  clip_length, clip_stride)
        assert anchor in (0, 2)
        check_clips(query, key, length, clip_length, clip_stride)
  # Batches: frame t of every video is the constant t, so the pixels give the indices.
  length = 25
  videos = np.broadcast_to(np.arange(length, dtype=np.uint8)[None, :, None, None, None],
                           (10, length, 8, 8, 3))
  source = InMemoryVideos(videos, batch_size=10, seed=1, clip_length=2, clip_stride=3)
  batch = source.batch(0)
  batch_layout.check_batch(batch, 10, (8, 8), clip_length=2)
  indices = batch['frames'][..., 0, 0, 0].astype(int)  # (B, 6, L)
  for example in indices:
    check_clips(example[:3], example[3:], length, 2, 3)
  with pytest.raises(ValueError, match='at least 18 frames'):
    InMemoryVideos(videos[:, :17], batch_size=2, seed=0, clip_length=2, clip_stride=2)


@pytest.fixture(scope='module')
def index_coded_records(tmp_path_factory):
  """Frame folders where every pixel of frame i of a video of F frames is (4 i, 4 F, 128)."""
  root = tmp_path_factory.mktemp('clip_frames')
  lines = []
  for video, length in enumerate(CODED_LENGTHS):
    folder = root / 'train' / 'coded' / f'video_{video}'
    folder.mkdir(parents=True)
    for i in range(length):
      Image.new('RGB', FRAME_SIZE[::-1], (4 * i, 4 * length, 128)).save(
          folder / f'frame_{i + 1:05d}.jpg', quality=95)
    lines.append(f'coded/video_{video} {length} 0\n')
  (root / 'train.txt').write_text(''.join(lines))
  records_dir = str(root / 'records')
  prepare.main(['--source=frames', f'--root={root}', '--splits=train', f'--out={records_dir}',
                '--num_shards=2', '--workers=1', '--min_frames=18'])
  return records_dir


def test_train_reader_reads_clips_by_the_rules(index_coded_records):
  iterator = train_reader.make_train_iterator(
      index_coded_records, 'train', batch_size=8, frame_size=FRAME_SIZE, seed=3,
      clip_length=2, clip_stride=2, process_index=0, process_count=1,
      options=record_stream.ReaderOptions(cycle_length=2))
  seen = set()
  for _ in range(4):
    batch = next(iterator)
    batch_layout.check_batch(batch, 8, FRAME_SIZE, clip_length=2)
    indices, lengths = coded_indices(batch['frames'])
    for example, video_lengths in zip(indices, lengths):
      length = video_lengths[0, 0]
      assert np.all(video_lengths == length)
      check_clips(example[:3], example[3:], length, 2, 2)
      seen.add(length)
  assert seen == set(CODED_LENGTHS)
  # Clips of 4 frames need 24 frames per video: the error names the preparation flag.
  with pytest.raises(ValueError, match='--min_frames=24'):
    next(train_reader.make_train_iterator(
        index_coded_records, 'train', batch_size=2, frame_size=FRAME_SIZE, seed=0,
        clip_length=4, clip_stride=1, process_index=0, process_count=1))


def coded_indices(frames):
  """(..., H, W, 3) index-coded frames -> (frame index, video length) int arrays."""
  pixels = frames.mean(axis=(-3, -2))
  return tuple(np.rint(pixels[..., c] / 4).astype(int) for c in (0, 1))


@pytest.mark.parametrize('count, clip_length, clip_stride', [(3, 2, 2), (4, 3, 1), (2, 4, 10)])
def test_eval_reader_takes_uniformly_spaced_clips(index_coded_records, count, clip_length,
                                                  clip_stride):
  """Clip starts are round(linspace(1, F - span + 1, N)) - 1; a clip longer than the video
  (the (4, 10) case: 31 frames) starts at 0 and repeats the last frame."""
  batches = list(eval_reader.make_eval_iterator(
      index_coded_records, 'train', batch_size=3, num_frames=count, crop_size=16,
      clip_length=clip_length, clip_stride=clip_stride, process_index=0, process_count=1))
  frames = np.concatenate([b['frames'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  assert frames.shape == (6, count, clip_length, 16, 16, 3) and mask.sum() == 4
  indices, lengths = coded_indices(frames[mask])
  span = batch_layout.clip_span(clip_length, clip_stride)
  for video_indices, video_lengths in zip(indices, lengths):
    length = video_lengths[0, 0]
    starts = np.round(np.linspace(1, max(length - span + 1, 1), count)).astype(int) - 1
    expected = np.minimum(starts[:, None] + clip_stride * np.arange(clip_length), length - 1)
    np.testing.assert_array_equal(video_indices, expected)
  assert sorted(lengths[:, 0, 0]) == sorted(CODED_LENGTHS)


def test_tsn_sampler_draws_every_clip_that_fits_its_segment(index_coded_records):
  segments, clip_length, clip_stride = 3, 3, 2
  span = batch_layout.clip_span(clip_length, clip_stride)
  for length in (18, 31, 7):
    bounds = np.floor(np.linspace(0, length, segments + 1)).astype(int)
    drawn = np.stack([tsn_reader.sample_segment_frames(
        length, segments, tf.constant([seed, 1], tf.int64), clip_length, clip_stride).numpy()
                      for seed in range(300)])
    assert drawn.shape == (300, segments, clip_length)
    for segment in range(segments):
      lo, hi = bounds[segment], bounds[segment + 1]
      fitting = set(range(lo, hi - span + 1)) or {lo}  # 7 frames: segments of 2, no clip fits
      assert set(drawn[:, segment, 0]) == fitting, (length, segment)
      np.testing.assert_array_equal(
          drawn[:, segment], np.minimum(drawn[:, segment, :1] + clip_stride *
                                        np.arange(clip_length), length - 1))
  # The reader gives the drawn clips' frames, one clip a segment.
  batch = next(tsn_reader.make_tsn_train_iterator(
      index_coded_records, 'train', batch_size=4, frame_size=FRAME_SIZE, num_segments=segments,
      seed=0, clip_length=clip_length, clip_stride=clip_stride, process_index=0,
      process_count=1))
  assert batch['frames'].shape == (4, segments, clip_length) + FRAME_SIZE + (3,)
  indices, lengths = coded_indices(batch['frames'])
  for video_indices, video_lengths in zip(indices, lengths):
    bounds = np.floor(np.linspace(0, video_lengths[0, 0], segments + 1)).astype(int)
    np.testing.assert_array_equal(video_indices - video_indices[:, :1],
                                  np.broadcast_to(clip_stride * np.arange(clip_length),
                                                  video_indices.shape))
    assert np.all(bounds[:-1] <= video_indices[:, 0])
    assert np.all(video_indices[:, -1] < bounds[1:])


def test_every_frame_of_a_clip_gets_the_clips_one_draw():
  """Clip frame l of every crop equals the single-frame augmentation of frame l with the
  clip's key, so box, flip, jitter, grayscale and blur are drawn once per clip."""
  augment_frames = jax.jit(augment.augment_frames, static_argnums=(3, 4))
  config = augment.AugmentConfig()
  rng = np.random.default_rng(0)
  b, n, length = 2, 3, 3
  clips = rng.integers(0, 256, (b, n, length, 24, 28, 3), dtype=np.uint8)
  sources = jnp.asarray([[0, 1, 2, 0], [2, 1, 0, 0]], jnp.int32)
  keys = augment.example_keys(jax.random.key(4), jnp.arange(b), 4)
  crops = np.asarray(augment_frames(jnp.asarray(clips), sources, keys, 16, config))
  assert crops.shape == (b, 4, length, 16, 16, 3)
  # Frame l of every clip as an example of single frames, with its clip's keys.
  frames = clips.transpose(0, 2, 1, 3, 4, 5).reshape((b * length, n) + clips.shape[3:])
  alone = augment_frames(jnp.asarray(frames), jnp.repeat(sources, length, axis=0),
                         jnp.repeat(keys, length, axis=0), 16, config)
  # Equal up to float32 rounding: vmapping over the clip axis reorders some sums.
  np.testing.assert_allclose(crops, np.asarray(alone).reshape(b, length, 4, 16, 16, 3)
                             .transpose(0, 2, 1, 3, 4, 5), atol=1e-5)
  # Crops 0 and 3 of example 0 cut the same clip with different draws (the x1 case).
  assert np.abs(crops[0, 0] - crops[0, 3]).max() > 0.1
  # On a clip of identical frames every frame's crop is the same.
  same = np.broadcast_to(clips[:, :, :1], clips.shape)
  crops = np.asarray(augment_frames(jnp.asarray(same), sources, keys, 16, config))
  np.testing.assert_allclose(crops, np.broadcast_to(crops[:, :, :1], crops.shape), atol=1e-5)


def clip_config(**overrides):
  """tiny_config with a 1/16-width R3D-18 on 2-frame clips at 80 px (one example a device)."""
  return tiny_config(**{'model.architecture': 'r3d_18', 'model.width_multiplier': 0.0625,
                        'data.clip_length': 2, 'data.clip_stride': 2, 'model.online_bn': 'sync',
                        'model.key_bn': 'sync', **overrides})


def one_step(config, num_devices, state, batch):
  mesh = tstep.make_mesh(jax.devices()[:num_devices])
  step = tstep.make_train_step(config, mesh, ts.make_optimizer(config, 16),
                               ts.learning_rate_schedule(config, 16))
  new_state, metrics = step(tstep.replicate(state, mesh), to_global(batch, mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


def test_r3d_step_on_eight_devices_with_sync_bn_equals_one_device():
  # Peak rate 0.8, so that the first warm-up step (peak / 100) moves the weights far more than
  # their float32 rounding.
  config = clip_config(**{'optim.base_lr': 25.6, **NO_BLUR})
  videos = np.random.default_rng(0).integers(0, 256, (8, 18, 96, 96, 3), dtype=np.uint8)
  batch = InMemoryVideos(videos, batch_size=8, seed=0, clip_length=2, clip_stride=2).batch(0)
  # Jitted: the R3D init runs op by op otherwise (minutes on 2 cores).
  initial = jax.device_get(jax.jit(lambda rng: ts.create_train_state(config, 16, rng))(
      jax.random.key(0)))
  assert initial.params['backbone']['stem_0']['kernel'].shape == (3, 7, 7, 3, 4)
  state1, metrics1 = one_step(config, 1, initial, batch)
  state8, metrics8 = one_step(config, 8, initial, batch)
  # float32: the reductions' order differs between 1 and 8 devices (test_train_step.py runs
  # its 2D twin in float64); a wrong BN batch or a lost device moves the values by O(1).
  for name in ('loss', 'loss_inter', 'loss_intra', 'loss_video', 'loss_order', 'grad_norm'):
    np.testing.assert_allclose(metrics8[name], metrics1[name], rtol=1e-4, err_msg=name)
  for field in ('params', 'opt_state', 'batch_stats', 'ema_batch_stats', 'queue_inter',
                'queue_video'):
    largest = lambda tree: max(float(np.abs(x).max()) for x in jax.tree.leaves(tree))
    worst = largest(jax.tree.map(np.subtract, getattr(state8, field), getattr(state1, field)))
    change = largest(jax.tree.map(np.subtract, getattr(state1, field), getattr(initial, field)))
    assert change > 0 and worst <= 1e-3 * change, (field, worst, change)


@pytest.mark.parametrize('module', [ucf101_r3d, ucf101_s3d, demo_r3d])
def test_clip_configs_pass_their_checks(module):
  config = module.get_config()
  config.data.source = 'in_memory'  # no records here; every other check applies
  config_checks.validate_config(config, num_devices=8, num_processes=1)
  assert config.model.architecture in ('r3d_18', 's3d') and config.data.clip_length > 1


@pytest.mark.parametrize('overrides, message', [
    ({'model.architecture': 'r3d_18'}, 'config.data.clip_length to 2 or more'),
    ({'model.architecture': 's3d', 'data.clip_length': 4}, 'at least 5 frames'),
    ({'model.architecture': 's3d', 'data.clip_length': 8, 'data.image_size': 16},
     'crops of at least 17 px'),
    ({'data.clip_length': 2}, "architecture='resnet' encodes single frames"),
    ({'model.architecture': 'r3d_18', 'data.clip_length': 2, 'data.clip_stride': 0},
     'config.data.clip_stride=0 must be a positive integer'),
    ({'model.architecture': 'r2plus1d'}, 'config.model.architecture'),
])
def test_clip_config_errors_name_the_key(overrides, message):
  with pytest.raises(ConfigError, match=message):
    config_checks.validate_config(tiny_config(**overrides), num_devices=8, num_processes=1)


def test_step_schedule_divides_the_rate_at_the_decay_epochs():
  config = ucf101_r3d.get_config()  # 300 epochs, x0.1 at 150 and 250, no warm-up
  per_epoch = 9537 // config.batch_size
  schedule = ts.learning_rate_schedule(config, 9537)
  peak = ts.peak_learning_rate(config)
  for epoch, factor in ((0, 1), (149, 1), (150, 0.1), (249, 0.1), (250, 0.01), (299, 0.01)):
    np.testing.assert_allclose(schedule(epoch * per_epoch), peak * factor, rtol=1e-5,
                               err_msg=str(epoch))
  config.optim.warmup_epochs = 5  # decay epochs still count from the run's start
  schedule = ts.learning_rate_schedule(config, 9537)
  np.testing.assert_allclose(schedule(0), peak / 100, rtol=1e-5)
  np.testing.assert_allclose(schedule(150 * per_epoch - 1), peak, rtol=1e-5)
  np.testing.assert_allclose(schedule(150 * per_epoch), peak / 10, rtol=1e-5)
  config.optim.decay_epochs = (250, 150)
  with pytest.raises(ConfigError, match='config.optim.decay_epochs=\\(250, 150\\)'):
    config.data.source = 'in_memory'
    config_checks.validate_config(config, num_devices=8, num_processes=1)


def test_export_from_a_3d_run(tmp_path):
  """python -m vclr_jax.export on an R3D-18 run: torchvision's r3d_18 at the run's width
  loads the file and gives our features on clips of the run's length."""
  config = clip_config()
  model = ts.build_model(config.model)
  variables = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 3, 2, 80, 80, 3)),
                                             train=False))(jax.random.key(3))
  workdir = str(tmp_path / 'run')
  checkpointing.write_run_config(workdir, config)
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  checkpointing.save(manager, 5, dict(variables, step=np.int32(5)), force=True)
  manager.wait_until_finished()
  out = str(tmp_path / 'r3d.pth')
  verification = export_run(workdir, None, 'torchvision', out, image_size=80)
  assert verification.passed and verification.inputs == '2-frame 80px clips'
  metadata = json.loads(open(metadata_path(out)).read())
  assert metadata['architecture'] == 'r3d_18' and metadata['input_layout'] == 'NCTHW float32'
  # Grad-CAM draws frames of 2D ResNets: it refuses the run, naming the way out.
  with pytest.raises(UserError, match="Grad-CAM.*architecture='r3d_18'|architecture='r3d_18'.*"
                                      'Grad-CAM'):
    visualize.load_source(workdir)


def test_snippet_features_refuse_a_3d_run_with_the_way_out(tmp_path):
  from configs import snippet_features
  from vclr_jax.evaluation import snippets
  workdir = str(tmp_path / 'run')
  checkpointing.write_run_config(workdir, clip_config())
  with pytest.raises(UserError, match="architecture='r3d_18'.*snippet features.*"
                                      'vclr_jax.evaluate .linear, retrieval, finetune'):
    snippets.run_snippet_features(snippet_features.get_config(), workdir)
