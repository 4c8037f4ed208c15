"""Grad-CAM maps of the last ResNet stage (a ViT's class-token attention) for a few frames of a
video, for one or more encoders.

  python -m vclr_jax.visualize --workdir=runs/k400 --video=clip.mp4 --out=gradcam/
  python -m vclr_jax.visualize --workdir=runs/k400/finetune/ucf101 \
      --video=data/ucf101_records/test --video_index=7 --out=gradcam/
  python -m vclr_jax.visualize --compare=runs/k400,exports/moco_v2.pth --video=clip.mp4 --out=gradcam/

Sources: a pretraining run directory, a fine-tuning run directory (RUN/finetune/<name>) or a
PyTorch/safetensors weight file in any layout vclr_jax.interop reads (torchvision, MoCo,
reference VCLR, mmaction2; architecture inferred from the file); --compare lists several, one
row each in the grid. Video: a file PyAV decodes, or a prepared split (RECORDS/<split>) with
--video_index. --num_frames evenly spaced frames are resized to a short side of --image_size
and shown whole.

Grad-CAM (Selvaraju et al.): A = the output of the last block of the last stage (layer4),
(h, w, C) per frame; g = d target / d A; channel weights w_c = the spatial mean of g_c; map =
ReLU(sum_c w_c A_c), bilinearly upsampled to the frame and divided by its maximum. Targets:

- fine-tuned (TSN) run: the logit of the class the video is predicted as (the average of its
  frames' logits, TSN's consensus), or --class_index;
- any other encoder: the cosine similarity of the frame's pooled backbone feature to the
  video's feature (the mean over the shown frames, held constant): where the frame shows what
  the video as a whole is about, which VCLR's video-level and inter-frame losses train for.
  Backbone features only, so encoders without VCLR's heads (ImageNet, MoCo, torchvision
  files) are compared on equal terms.

Writes OUT/frame_<k>.png, OUT/<source>_gradcam_<k>.png (the map, jet colours),
OUT/<source>_overlay_<k>.png, and OUT/gradcam_grid.png (frames, then one row of overlays per
source, titled with the target's value, the target named on the left).

A ViT run (pretraining or fine-tuned) is shown by its class token's attention in the last block
instead: for each head, the class token's attention weights over the patches, divided by
their sum (the weight it gives itself left out), so each map sums to 1 over the patches; and
their mean over the heads. It takes one row per head and one for the mean, titled with the
share of the class token's attention that went to patches, in the same grid; the maps are
saved as OUT/<source>-<head or mean>_attention_<k>.png and, at patch resolution, in
OUT/<source>_attention.npz ('maps': (frames, heads, rows, columns), 'on_patches': (frames,
heads)).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from etils import epath
from PIL import Image

from vclr_jax import augment
from vclr_jax import checkpointing
from vclr_jax.evaluation.finetune import TSN
from vclr_jax.models import vit
from vclr_jax.models.resnet import STAGE_BLOCKS, ResNet
from vclr_jax.models.vclr import vit_spec
from vclr_jax.config_checks import PYTORCH_SUFFIXES

DEFAULT_IMAGE_SIZE = 224
GRID_FILENAME = 'gradcam_grid.png'
OVERLAY_WEIGHT = 0.45  # of the map's colours over the frame


def last_block_name(depth: int) -> str:
  """The module whose output Grad-CAM explains: the last block of layer4."""
  return f'layer4_{STAGE_BLOCKS[depth][-1] - 1}'


def feature_map_and_gradients(target_fn: Callable[[dict, jax.Array], jax.Array], variables: dict,
                              frames: jax.Array, block_name: str):
  """(A, dT/dA, T) for the module named ``block_name`` inside ``target_fn``'s network.

  ``target_fn(variables, frames)`` maps (N, H, W, 3) frames to (N,) targets, target i
  depending on frame i only (BatchNorm in inference mode). A zero offset is added to the
  block's output through a Flax method interceptor, and the gradient with respect to the
  offset is the gradient with respect to A, through the network as it is.
  """

  def run(offset):
    captured = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == '__call__' and context.module.name == block_name:
        out = out if offset is None else out + offset
        captured.append(out)
      return out

    with nn.intercept_methods(interceptor):
      targets = target_fn(variables, frames)
    if len(captured) != 1:
      raise ValueError(f'The network ran {len(captured)} modules named {block_name!r}; Grad-CAM '
                       'needs exactly one.')
    return targets, captured[0]

  _, shape = jax.eval_shape(lambda: run(None))
  targets, vjp, feature_map = jax.vjp(run, jnp.zeros(shape.shape, shape.dtype), has_aux=True)
  (gradients,) = vjp(jnp.ones_like(targets))
  return feature_map, gradients, targets


def cam_from(feature_map: jax.Array, gradients: jax.Array) -> jax.Array:
  """(N, h, w, C) activations and gradients -> (N, h, w) ReLU(sum_c mean_hw(g_c) A_c)."""
  weights = gradients.mean(axis=(1, 2))
  return jax.nn.relu(jnp.einsum('nhwc,nc->nhw', feature_map, weights))


def upsample_and_normalise(cams: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(N, h, w) -> (N, H, W) bilinear, each map divided by its maximum (all-zero maps stay 0)."""
  up = jax.image.resize(cams, (cams.shape[0],) + tuple(size), 'bilinear')
  return up / jnp.maximum(up.max(axis=(1, 2), keepdims=True), 1e-12)


def similarity_target(backbone: ResNet):
  """(variables, frames) -> cosine similarity of each frame's pooled feature to the frames'
  mean feature (held constant)."""

  def target(variables, frames):
    feats = backbone.apply(variables, augment.normalize_uint8(frames), train=False)
    video = jax.lax.stop_gradient(feats.mean(axis=0))
    return feats @ video / (jnp.linalg.norm(feats, axis=-1) * jnp.linalg.norm(video) + 1e-12)

  return target


def class_target(model, class_index: int):
  """(variables, frames) -> the TSN logit of ``class_index`` for each frame alone (a
  one-segment video)."""

  def target(variables, frames):
    logits = model.apply(variables, augment.normalize_uint8(frames)[:, None], train=False)
    return logits[:, class_index]

  return target


@functools.partial(jax.jit, static_argnames=('model', 'class_index'))
def grad_cam_maps(model, class_index: int | None, variables: dict, frames: jax.Array):
  """((N, H, W) maps in [0, 1], (N,) targets): the class target of a TSN ``model`` for
  ``class_index``, else the similarity target of a ResNet ``model``. Encoders of one
  architecture share the compiled function: the weights are arguments, not constants."""
  target_fn = similarity_target(model) if class_index is None else class_target(model,
                                                                                class_index)
  feature_map, gradients, targets = feature_map_and_gradients(
      target_fn, variables, frames, last_block_name(model.depth))
  return upsample_and_normalise(cam_from(feature_map, gradients), frames.shape[1:3]), targets


@functools.partial(jax.jit, static_argnames=('model',))
def tsn_consensus_class(model, variables: dict, frames: jax.Array) -> jax.Array:
  """The class TSN predicts for the video of (N, H, W, 3) frames, each frame a segment."""
  logits = model.apply(variables, augment.normalize_uint8(frames)[None], train=False)
  return jnp.argmax(logits[0])


@functools.partial(jax.jit, static_argnames=('model', 'depth'))
def class_token_attention(model, depth: int, variables: dict, frames: jax.Array):
  """((N, heads, rows, cols) maps, (N, heads) weight on the patches) of the class token's
  attention in the last of ``depth`` blocks of a ViT ``model`` (or a TSN with a ViT backbone,
  each frame a one-segment video) on (N, H, W, 3) uint8 frames; each map is the attention over
  the patches divided by its sum, so it sums to 1."""
  inputs = augment.normalize_uint8(frames)
  if isinstance(model, TSN):
    inputs = inputs[:, None]
  _, state = model.apply(variables, inputs, train=False, mutable=['intermediates'])
  (attention,) = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)
                  if f"['blocks_{depth - 1}']['attn']['attention']" in jax.tree_util.keystr(path)]
  to_patches = attention[:, :, 0, 1:]  # the class token's row, without its own column
  on_patches = to_patches.sum(axis=-1)
  grid = (frames.shape[1] // vit.PATCH_SIZE, frames.shape[2] // vit.PATCH_SIZE)
  maps = to_patches / on_patches[..., None]
  return maps.reshape(maps.shape[:2] + grid), on_patches


@dataclasses.dataclass
class Source:
  """One encoder to explain: a ResNet (similarity target), a TSN (class target) or a ViT
  (``vit_depth`` set: the class token's attention, with or without a TSN around it)."""
  name: str  # file-name safe, unique
  description: str
  model: nn.Module
  variables: dict
  vit_depth: int = 0

  @property
  def target_name(self) -> str:
    if self.vit_depth:
      return 'class token attention on patches'
    return 'class logit' if isinstance(self.model, TSN) else 'similarity to the video feature'


@dataclasses.dataclass
class Row:
  """One row of overlays in the grid: (N, H, W) maps in [0, 1] and a value per frame."""
  name: str  # file-name prefix
  label: str  # what the values are, on the left of the row
  picture: str  # 'gradcam' or 'attention', in the file names
  maps: np.ndarray
  values: np.ndarray


def _backbone_source(name, description, depth, width_multiplier, variables) -> Source:
  return Source(name, description, ResNet(depth, width_multiplier),
                {'params': variables['params']['backbone'],
                 'batch_stats': variables['batch_stats']['backbone']})


def load_source(path: str) -> Source:
  """A run directory (pretraining or RUN/finetune/<name>) or a PyTorch/safetensors file."""
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', epath.Path(path).stem)
  if path.endswith(PYTORCH_SUFFIXES):
    from vclr_jax.interop.checkpoint_layouts import read_torch_weights
    from vclr_jax.interop.loading import fill_variables
    from vclr_jax.interop.torch_layout import infer_architecture
    weights = read_torch_weights(path)
    depth, width_multiplier = infer_architecture(weights.tensors)
    shapes = jax.eval_shape(lambda rng: ResNet(depth, width_multiplier).init(
        rng, jnp.zeros((1, 32, 32, 3)), train=False), jax.random.key(0))
    template = {kind: {'backbone': shapes[kind]} for kind in ('params', 'batch_stats')}
    variables, report = fill_variables(weights, template)
    if report.missing:
      raise ValueError(f'{path} lacks {len(report.missing)} backbone variables, e.g. '
                       f'{"/".join(report.missing[0])}: not a whole ResNet.')
    return _backbone_source(name, f'{path} (ResNet-{depth}, {weights.layout})', depth,
                            width_multiplier, variables)
  variables, step = checkpointing.load_encoder_variables(path)
  finetuned = 'classifier' in variables['params']
  # A fine-tuning run RUN/finetune/<name>: the architecture is its pretraining run's.
  run_dir = checkpointing.absolute(path).parent.parent if finetuned else path
  run_config = checkpointing.load_run_config(run_dir)
  checkpointing.require_frame_backbone(run_config, run_dir, 'Grad-CAM (vclr_jax.visualize)')
  model_config = run_config.model
  vit_size = vit_spec(model_config)
  vit_depth = vit_size.depth if vit_size else 0
  if not finetuned:
    if vit_size:
      return Source(name, f'{path} step {step}', vit.VisionTransformer(vit_size),
                    {'params': variables['params']['backbone']}, vit_depth)
    return _backbone_source(name, f'{path} step {step}', model_config.depth,
                            model_config.width_multiplier, variables)
  num_classes = variables['params']['classifier']['kernel'].shape[-1]
  return Source(f'finetune-{name}', f'{path} step {step} (fine-tuned)',
                TSN(model_config.depth, model_config.width_multiplier, num_classes, dropout=0.0,
                    architecture=model_config.get('architecture', 'resnet'), vit_size=vit_size),
                variables, vit_depth)


def grad_cam(source: Source, frames: np.ndarray,
             class_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """((N, H, W) maps in [0, 1], (N,) target values) for (N, H, W, 3) uint8 frames; a TSN
  explains ``class_index``, by default the class it predicts for the frames."""
  frames = jnp.asarray(frames)
  if isinstance(source.model, TSN) and class_index is None:
    class_index = int(tsn_consensus_class(source.model, source.variables, frames))
  elif not isinstance(source.model, TSN):
    class_index = None
  maps, targets = grad_cam_maps(source.model, class_index, source.variables, frames)
  return np.asarray(maps), np.asarray(targets)


def attention_rows(source: Source, frames: np.ndarray, out_dir: str) -> list[Row]:
  """A ViT source's rows (every head, then the mean of the heads); writes the patch-level maps
  to OUT/<source>_attention.npz."""
  maps, on_patches = (np.asarray(x) for x in class_token_attention(
      source.model, source.vit_depth, source.variables, jnp.asarray(frames)))
  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  with (out_dir / f'{source.name}_attention.npz').open('wb') as f:
    np.savez(f, maps=maps, on_patches=on_patches)
  maps = np.concatenate([maps, maps.mean(axis=1, keepdims=True)], axis=1)
  on_patches = np.concatenate([on_patches, on_patches.mean(axis=1, keepdims=True)], axis=1)
  rows = []
  for head in range(maps.shape[1]):
    tag = 'mean' if head == maps.shape[1] - 1 else f'head{head}'
    # Up to the frame's size the way Grad-CAM's maps go, the whole patch grid stretched over it.
    shown = upsample_and_normalise(jnp.asarray(maps[:, head]), frames.shape[1:3])
    rows.append(Row(f'{source.name}-{tag}', f'{source.target_name} ({tag})', 'attention',
                    np.asarray(shown), on_patches[:, head]))
  return rows


def evenly_spaced(num_frames: int, count: int) -> np.ndarray:
  """``count`` frame indices from the first to the last frame (fewer for short videos)."""
  return np.unique(np.round(np.linspace(0, num_frames - 1, count)).astype(int))


def read_frames(video: str, video_index: int, count: int, short_side: int) -> np.ndarray:
  """(N, H, W, 3) uint8: ``count`` evenly spaced frames, short side resized to ``short_side``."""
  if epath.Path(video).is_dir():
    from input_pipeline import records  # TensorFlow only for prepared records
    jpegs = records.video_jpegs(video, video_index)
  else:
    from input_pipeline import video_decoding
    try:
      jpegs = video_decoding.decode_video_file(
          video, fps=None, geometry=video_decoding.FrameGeometry(short_side=short_side),
          jpeg_quality=95).jpeg_frames
    except video_decoding.VideoError as error:
      raise ValueError(f'--video={video}: {error}') from error
  frames = []
  for index in evenly_spaced(len(jpegs), count):
    with Image.open(io.BytesIO(jpegs[index])) as image:
      image = image.convert('RGB')
      scale = short_side / min(image.size)
      size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
      frames.append(np.asarray(image.resize(size, Image.Resampling.BILINEAR)))
  return np.stack(frames)


def colourise(cam_map: np.ndarray) -> np.ndarray:
  """(H, W) in [0, 1] -> (H, W, 3) uint8 in matplotlib's jet colours."""
  from matplotlib import colormaps
  return (colormaps['jet'](cam_map)[..., :3] * 255).round().astype(np.uint8)


def overlay(frame: np.ndarray, cam_map: np.ndarray) -> np.ndarray:
  blended = (1 - OVERLAY_WEIGHT) * frame + OVERLAY_WEIGHT * colourise(cam_map)
  return blended.round().astype(np.uint8)


def write_pictures(out_dir: str, frames: np.ndarray, rows: list[Row]) -> str:
  """The PNGs described in the module docstring; returns the grid's path."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  out_dir = epath.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)

  def save(picture: np.ndarray, name: str):
    with (out_dir / name).open('wb') as f:
      Image.fromarray(picture).save(f, format='png')

  for k, frame in enumerate(frames):
    save(frame, f'frame_{k}.png')
    for row in rows:
      save(colourise(row.maps[k]), f'{row.name}_{row.picture}_{k}.png')
      save(overlay(frame, row.maps[k]), f'{row.name}_overlay_{k}.png')
  num_rows, cols = 1 + len(rows), len(frames)
  aspect = frames.shape[2] / frames.shape[1]
  figure, axes = plt.subplots(num_rows, cols, figsize=(2.4 * aspect * cols, 2.6 * num_rows),
                              squeeze=False)
  for k, frame in enumerate(frames):
    axes[0, k].imshow(frame)
    axes[0, k].set_title(f'frame {k}', fontsize=8)
    for index, row in enumerate(rows, start=1):
      axes[index, k].imshow(overlay(frame, row.maps[k]))
      axes[index, k].set_title(f'{row.name}: {row.values[k]:.3g}', fontsize=7)
      if k == 0:
        axes[index, k].set_ylabel(row.label, fontsize=7)
  for axis in axes.flat:
    axis.set_xticks([])
    axis.set_yticks([])
  figure.tight_layout()
  path = out_dir / GRID_FILENAME
  with path.open('wb') as f:
    figure.savefig(f, format='png', dpi=80)
  plt.close(figure)
  return str(path)


def visualize(sources: list[str], video: str, out_dir: str, *, video_index: int = 0,
              num_frames: int = 4, image_size: int = 0, class_index: int | None = None,
              log=print) -> str:
  """Loads every source, computes its maps on the same frames, writes the PNGs; returns the grid."""
  loaded = [load_source(path) for path in sources]
  for i, source in enumerate(loaded):
    if [other.name for other in loaded].count(source.name) > 1:
      source.name = f'{source.name}-{i}'
  image_size = image_size or next(
      (checkpointing.load_run_config(path).data.image_size for path in sources
       if (epath.Path(path) / checkpointing.CONFIG_FILE).is_file()), DEFAULT_IMAGE_SIZE)
  frames = read_frames(video, video_index, num_frames, image_size)
  rows = []
  for source in loaded:
    if source.vit_depth:
      rows += attention_rows(source, frames, out_dir)
      log(f'{source.name}: {source.description}; {source.target_name} (mean of the heads) '
          f'{np.array2string(rows[-1].values, precision=3)}')
      continue
    maps, targets = grad_cam(source, frames, class_index)
    log(f'{source.name}: {source.description}; target: {source.target_name} '
        f'{np.array2string(targets, precision=3)}')
    rows.append(Row(source.name, source.target_name, 'gradcam', maps, targets))
  return write_pictures(out_dir, frames, rows)


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'A pretraining run, or a fine-tuning run '
                      '(RUN/finetune/<name>).')
  flags.DEFINE_string('checkpoint', None, 'A PyTorch (.pth/.pt/.tar) or .safetensors file.')
  flags.DEFINE_list('compare', None, 'Several sources (run directories or weight files), one '
                    'row each.')
  flags.DEFINE_string('video', None, 'A video file, or a prepared split directory '
                      '(RECORDS/<split>) with --video_index.')
  flags.DEFINE_integer('video_index', 0, 'Which video of a prepared split.')
  flags.DEFINE_string('out', None, 'Directory for the PNGs.')
  flags.DEFINE_integer('num_frames', 4, 'Evenly spaced frames to explain.')
  flags.DEFINE_integer('image_size', 0, 'Short side of the frames fed to the network (0: the '
                       f'first run\'s config.data.image_size, else {DEFAULT_IMAGE_SIZE}).')
  flags.DEFINE_integer('class_index', None, 'Fine-tuned runs: explain this class instead of '
                       'the predicted one.')
  flags.mark_flags_as_required(['video', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sources = [p for p in (FLAGS.workdir, FLAGS.checkpoint) if p] + (FLAGS.compare or [])
  if not sources:
    raise app.UsageError('Give --workdir=RUN, --checkpoint=FILE or --compare=A,B.')
  grid = visualize(sources, FLAGS.video, FLAGS.out, video_index=FLAGS.video_index,
                   num_frames=FLAGS.num_frames, image_size=FLAGS.image_size,
                   class_index=FLAGS.class_index)
  print(f'Grad-CAM pictures in {FLAGS.out}; grid: {grid}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
