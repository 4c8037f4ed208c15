"""Grad-CAM: equal to NumPy from the captured feature map and analytic gradients (similarity
and fine-tuned class targets), not constant on a frame with an object, and the tool end to end
on a run and its PyTorch-layout export."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from conftest import tiny_config
from eval_fixtures import make_encoder_run
from input_pipeline import synthetic
from vclr_jax import augment
from vclr_jax import checkpointing
from vclr_jax import visualize
from vclr_jax.evaluation.finetune import TSN
from vclr_jax.interop.exporting import export_encoder
from vclr_jax.models.resnet import ResNet

DEPTH, WIDTH = tiny_config().model.depth, tiny_config().model.width_multiplier
BLOCK = visualize.last_block_name(DEPTH)
NUM_CLASSES = 3


def _object_frames():
  """Two frames of the same bright object on a dark background, moved between them."""
  frames = np.full((2, 96, 112, 3), 30, np.uint8)
  frames[0, 20:50, 15:45] = (230, 200, 40)
  frames[1, 40:70, 60:90] = (230, 200, 40)
  return frames


def _init(module, shape, seed):
  return jax.jit(lambda rng: module.init(rng, jnp.zeros(shape), train=False))(
      jax.random.key(seed))


def _captured_feature_map(module, variables, inputs):
  """The last block's output through Flax's own capture_intermediates (not the tool's route)."""
  _, state = jax.jit(lambda inputs: module.apply(
      variables, inputs, train=False, mutable=['intermediates'],
      capture_intermediates=lambda m, _: m.name == BLOCK))(inputs)
  (found,) = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)
              if BLOCK in jax.tree_util.keystr(path)]
  return np.asarray(found, np.float64)


def _numpy_cam(feature_map, gradients):
  weights = gradients.mean(axis=(1, 2))
  return np.maximum(np.einsum('nhwc,nc->nhw', feature_map, weights), 0)


def _tool_cam(target_fn, variables, frames):
  """The tool's own route (interceptor, vjp) to the low-resolution map and the targets."""

  @jax.jit
  def compute(variables, frames):
    feature_map, gradients, targets = visualize.feature_map_and_gradients(
        target_fn, variables, frames, BLOCK)
    return visualize.cam_from(feature_map, gradients), targets

  cam, targets = compute(variables, jnp.asarray(frames))
  return np.asarray(cam), np.asarray(targets)


def test_similarity_cam_equals_numpy_and_is_not_constant_on_an_object():
  frames = _object_frames()
  backbone = ResNet(DEPTH, WIDTH)
  variables = _init(backbone, (1, 96, 112, 3), 1)
  cam, targets = _tool_cam(visualize.similarity_target(backbone), variables, frames)
  feature_map = _captured_feature_map(backbone, variables, augment.normalize_uint8(frames))
  # target_i = cos(f_i, v), f_i = spatial mean of A_i, v = mean_i f_i held constant.
  f = feature_map.mean(axis=(1, 2))
  v = f.mean(axis=0)
  norms = np.linalg.norm(f, axis=1, keepdims=True)
  cosine = (f @ v)[:, None] / (norms * np.linalg.norm(v))
  d_f = v / (norms * np.linalg.norm(v)) - cosine * f / norms**2
  area = feature_map.shape[1] * feature_map.shape[2]
  d_a = np.broadcast_to(d_f[:, None, None, :] / area, feature_map.shape)
  np.testing.assert_allclose(targets, cosine[:, 0], rtol=1e-5)
  expected = _numpy_cam(feature_map, d_a)
  np.testing.assert_allclose(cam, expected, rtol=1e-3, atol=1e-4 * expected.max())
  # Not constant on the object frames, before and after upsampling.
  assert (cam.max(axis=(1, 2)) > cam.min(axis=(1, 2))).all()
  maps = np.asarray(visualize.upsample_and_normalise(jnp.asarray(cam), (96, 112)))
  assert maps.shape == (2, 96, 112)
  np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, rtol=1e-6)
  assert (maps.min(axis=(1, 2)) < 0.5).all()


def test_finetuned_run_explains_its_predicted_class_as_numpy_does(tmp_path):
  frames = np.random.default_rng(0).integers(0, 256, (3, 80, 112, 3), dtype=np.uint8)
  tsn = TSN(DEPTH, WIDTH, NUM_CLASSES, dropout=0.0)
  variables = _init(tsn, (1, 1, 80, 112, 3), 2)
  # A fine-tuning run RUN/finetune/tiny: its checkpoint, the architecture in RUN/config.json.
  checkpointing.write_run_config(str(tmp_path), tiny_config())
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save((tmp_path / 'finetune' / 'tiny' / 'checkpoints' / '5' /
                       'default').absolute(), dict(variables))
  source = visualize.load_source(str(tmp_path / 'finetune' / 'tiny'))
  assert source.name == 'finetune-tiny' and source.target_name == 'class logit'
  maps, logits = visualize.grad_cam(source, frames)

  feature_map = _captured_feature_map(tsn, variables, augment.normalize_uint8(frames)[:, None])
  kernel = np.asarray(variables['params']['classifier']['kernel'], np.float64)
  bias = np.asarray(variables['params']['classifier']['bias'], np.float64)
  all_logits = feature_map.mean(axis=(1, 2)) @ kernel + bias
  predicted = int(np.argmax(all_logits.mean(axis=0)))  # TSN's consensus over the frames
  np.testing.assert_allclose(logits, all_logits[:, predicted], rtol=1e-5, atol=1e-6)
  area = feature_map.shape[1] * feature_map.shape[2]
  expected = _numpy_cam(feature_map,
                        np.broadcast_to(kernel[:, predicted] / area, feature_map.shape))
  expected_maps = np.asarray(visualize.upsample_and_normalise(jnp.asarray(expected), (80, 112)))
  np.testing.assert_allclose(maps, expected_maps, rtol=1e-3, atol=1e-3)


def test_tool_compares_a_run_and_its_pytorch_layout_export(tmp_path):
  config = tiny_config()
  run_dir = make_encoder_run(tmp_path / 'run', config, step=2)
  variables, _ = checkpointing.load_encoder_variables(run_dir)
  export = str(tmp_path / 'encoder.safetensors')
  export_encoder(variables, export, 'safetensors', {'depth': DEPTH})
  video = str(tmp_path / 'clip.mp4')
  clip, fps, _ = synthetic.render_video(('ball', 'stripes'), np.random.default_rng(0), 'actions')
  synthetic.write_mp4(video, clip, fps)

  grid = visualize.visualize([run_dir, export], video, str(tmp_path / 'out'), num_frames=3,
                             log=lambda _: None)
  assert os.path.exists(grid)
  out = tmp_path / 'out'
  with Image.open(out / 'frame_0.png') as frame:
    assert min(frame.size) == config.data.image_size  # the run's training size by default
  for k in range(3):
    for name in ('run', 'encoder'):
      assert (out / f'{name}_overlay_{k}.png').exists()
    # The export holds the run's backbone: the same maps.
    run_map = np.asarray(Image.open(out / f'run_gradcam_{k}.png'), np.int16)
    export_map = np.asarray(Image.open(out / f'encoder_gradcam_{k}.png'), np.int16)
    assert np.abs(run_map - export_map).max() <= 2
