"""MoCo v2 augmentation on the accelerator: pure, batched JAX on uint8 frames (REFERENCE.md).

The host ships decoded uint8 frames; everything per pixel happens here, inside the jitted
step, vectorised over every crop of the per-device batch. Per crop, in MoCo v2's order:

1. RandomResizedCrop (area 0.2-1, aspect 3/4-4/3, torchvision's ``get_params``) with
   bilinear, antialiased resampling (PIL's filter, which MoCo's PIL pipeline uses, and
   torchvision's ``antialias=True``), and the horizontal flip (p 0.5);
2. ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, the four ops in a random order per crop;
3. RandomGrayscale p 0.2; 4. Gaussian blur, sigma U(0.1, 2), p 0.5, reflected borders
   (torchvision's ``gaussian_blur``); 5. /255 and ImageNet normalisation.

Semantics are torchvision's float-tensor ones. dm-pix was considered: its brightness is
additive, its contrast uses per-channel means and its saturation goes through HSV, so it
would not match MoCo's recipe.

How it is computed: per video the augmentation reads 1.6 MB of uint8 frames and writes
4.2 MB of float32 crops (2.1 MB in bfloat16) for under 1 GFLOP, so its cost is memory traffic.
It runs as a few passes, each one elementwise sweep over the crop, writing its result in the
step's compute dtype (``store_dtype``: bfloat16 halves every write and read between passes;
arithmetic stays in ``dtype``). ``benchmarks/train_step.py --aug_cost`` prints XLA's count of
FLOPs and bytes.
1. The crop: a gather, every output pixel a weighted sum of the few frame pixels under its
   resampling filter (``resize_taps``: K taps per axis, K from the largest box), read straight
   from the uint8 frame, the chosen frame indexed inside the gather. The flip reverses the
   column taps; every later op commutes with it (per-pixel colour, a global mean, a symmetric
   blur kernel). On a TPU, where each gather becomes an op of its own that writes its whole
   result (3.1 GB a video at K400 shapes), the crop and the blur are dots with the dense
   resampling and blur matrices instead (``platform``: the step passes its mesh's).
2. The colour jitter, with the hue shift, the one costly op, run once per pixel (on a CPU the
   jitter is two passes split at the shift). Brightness, contrast and saturation are each a
   blend ``clip(f x + (1 - f) o)`` with o = 0, the image's mean grey or the pixel's grey; the
   drawn order is laid out as three blend slots before the hue shift and three after it
   (``jitter_slots``), the slots at the positions of the cheap ops holding them, the others
   the identity. Contrast needs the mean grey of the image as it stands at contrast's
   position: a reduction ahead of the pass that holds contrast recomputes that pass's ops
   before it from the pass's input.
3. The colour pass goes on with the grayscale, the normalisation (it commutes with the blur,
   whose taps sum to one) and the blur's columns, a sum of gathered taps with reflected
   indices; the rows are then a last pass of gathered taps when the passes write a narrower
   dtype than they compute in (bfloat16 steps), else a dot with the blur matrix (identity
   taps when the crop is not blurred).
The colour work runs on the crop's three channel planes, so every op is elementwise on
same-shaped arrays (no computed plane broadcast over a channel axis). Where the passes end is
fixed on a CPU (``_stored``) and left to XLA's fusion on a GPU or TPU.

Randomness: every crop's draws come from a key derived from (run key, step, global example
index, crop), so the augmentation is the same on any number of devices and a resumed run
continues it exactly.

Clips (3D backbones): a crop is then a clip, and its one set of draws (box, flip, jitter
factors and order, grayscale, blur) applies to every frame of it, so the clip keeps its motion
and only the frames' content changes along it. Per-image statistics (contrast's mean grey)
stay per frame, as the same torchvision transform applied frame by frame would compute them.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# The one definition of ImageNet's statistics (RGB, [0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
# MoCo's blur sigma is in pixels of a 224 px crop; other sizes scale it to blur the same content.
BLUR_REFERENCE_SIZE = 224
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before the centre fallback.
# ColorJitter's ops, and the id of each in a drawn order.
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(len(JITTER_OPS))
NUM_JITTER_OPS = len(JITTER_OPS)
IDENTITY_OP = -1  # a jitter slot that holds no op


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The MoCo v2 recipe (config.data.augment holds the same fields)."""
  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_probability: float = 0.5
  jitter_probability: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  grayscale_probability: float = 0.2
  blur_probability: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)

  @classmethod
  def from_config(cls, augment_config) -> 'AugmentConfig':
    """From a ConfigDict/dict with these fields (lists become tuples)."""
    values = dict(augment_config)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'config.data.augment has unknown fields {unknown}.')
    return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in values.items()})

  def crops_only(self) -> 'AugmentConfig':
    """Crop and flip, no colour (the TSN fine-tuning recipe)."""
    return dataclasses.replace(self, jitter_probability=0.0, grayscale_probability=0.0,
                               blur_probability=0.0)


def default_augment_config_dict() -> dict:
  """AugmentConfig's fields as a dict, for ml_collections configs."""
  return dataclasses.asdict(AugmentConfig())


# ----------------------------------------------------------------------------- crop boxes

def random_resized_crop_box(key, height: int, width: int, scale=(0.2, 1.0),
                            ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params for one crop: (top, left, h, w) int32.

  Draws 10 (area, log-aspect) candidates and takes the first that fits, else the largest
  centred box with the aspect clamped to ``ratio``.
  """
  area_key, ratio_key, offset_key = jax.random.split(key, 3)
  area = height * width * jax.random.uniform(area_key, (CROP_ATTEMPTS,), minval=scale[0],
                                             maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (CROP_ATTEMPTS,), minval=math.log(ratio[0]),
                                      maxval=math.log(ratio[1])))
  crop_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  crop_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = jnp.argmax(fits)
  # The fallback depends only on the (static) frame size.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fallback_w, fallback_h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fallback_w, fallback_h = int(round(height * ratio[1])), height
  else:
    fallback_w, fallback_h = width, height
  any_fit = fits.any()
  h = jnp.where(any_fit, crop_h[first], fallback_h)
  w = jnp.where(any_fit, crop_w[first], fallback_w)
  # randint(0, H - h + 1) for a fitted box; the fallback is centred.
  u = jax.random.uniform(offset_key, (2,))
  top = jnp.where(any_fit, jnp.floor(u[0] * (height - h + 1)).astype(jnp.int32),
                  (height - h) // 2)
  left = jnp.where(any_fit, jnp.floor(u[1] * (width - w + 1)).astype(jnp.int32),
                   (width - w) // 2)
  return jnp.minimum(top, height - h), jnp.minimum(left, width - w), h, w


def resize_taps_count(size: int, output_size: int) -> int:
  """Taps per output pixel that cover the filter of any box of up to ``size`` source pixels.

  The triangle filter spans 2 max(extent / output_size, 1) pixels, so at most that many
  (rounded up) pixels have a weight; one more absorbs the rounding of the first tap.
  """
  return math.ceil(2 * max(size / output_size, 1.0)) + 1


def resize_taps(start, extent, size: int, output_size: int, dtype=jnp.float32):
  """(output_size, K) source pixels and weights that resample [start, start + extent).

  Output pixel i is centred at ``c = start + (i + 0.5) * extent / output_size`` in source
  pixels; input pixel j (centre j + 0.5) weighs ``max(0, 1 - |j + 0.5 - c| / support)`` with
  ``support = max(extent / output_size, 1)`` (the triangle filter stretched when shrinking,
  as PIL and torchvision's antialias do), restricted to the box and normalised. The K taps
  start at the first pixel the filter reaches; taps past the frame's edge are outside the box
  (weight 0), their index is clamped to stay a valid gather.
  """
  taps = resize_taps_count(size, output_size)
  start = jnp.asarray(start, dtype)
  extent = jnp.asarray(extent, dtype)
  step = extent / output_size
  centres = start + (jnp.arange(output_size, dtype=dtype) + 0.5) * step
  support = jnp.maximum(step, 1.0)
  first = jnp.floor(centres - support - 0.5).astype(jnp.int32) + 1
  pixels = first[:, None] + jnp.arange(taps, dtype=jnp.int32)
  pixel_centres = pixels.astype(dtype) + 0.5
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(pixel_centres - centres[:, None]) / support)
  weights = weights * ((pixel_centres >= start) & (pixel_centres < start + extent))
  weights = weights / weights.sum(axis=1, keepdims=True)
  return jnp.clip(pixels, 0, size - 1), weights


def crop_taps(top, left, crop_height, crop_width, flip, frame_shape, output_size: int,
              dtype=jnp.float32):
  """(rows, row weights, columns, column weights) of a flipped or unflipped crop of a frame.

  The row weights carry the 1/255 that takes uint8 to [0, 1], so the gathered sum is final.
  """
  height, width = frame_shape
  rows, row_weights = resize_taps(top, crop_height, height, output_size, dtype)
  columns, column_weights = resize_taps(left, crop_width, width, output_size, dtype)
  columns = jnp.where(flip, columns[::-1], columns)
  column_weights = jnp.where(flip, column_weights[::-1], column_weights)
  return rows, row_weights / 255.0, columns, column_weights


def _resample_by_taps(frames, index, taps):
  """The crop's three channel planes, each (S, S), gathered tap by tap from uint8 frames.

  ``frames[index]`` is the (H, W, 3) frame (``index`` a tuple of leading indices, () for a
  single frame), indexed inside the gathers so that choosing the frame copies nothing.
  One product per (row tap, column tap, channel) keeps the sum elementwise, fusible into
  whatever consumes the crop; a gather of all taps then a weighted reduction becomes a dot
  over a materialised (S, K, S, K, 3) gather.
  """
  rows, row_weights, columns, column_weights = taps
  dtype = row_weights.dtype
  planes = []
  for channel in range(3):
    plane = 0.0
    for a in range(rows.shape[1]):
      row = 0.0
      for b in range(columns.shape[1]):
        pixels = frames[index + (rows[:, a, None], columns[None, :, b], channel)]
        row = row + column_weights[None, :, b] * pixels.astype(dtype)
      plane = plane + row_weights[:, a, None] * row
    planes.append(plane)
  return tuple(planes)


def resampling_matrix(pixels, weights, size: int):
  """(S, K) source pixels and weights of S outputs -> the dense (S, size) resampling matrix."""
  return jnp.einsum('sk,skn->sn', weights,
                    (pixels[..., None] == jnp.arange(size)).astype(weights.dtype))


def _resample_by_matmul(frames, index, taps):
  """_resample_by_taps as two dots with the dense resampling matrices, columns first (the
  wider axis): what a TPU computes well, where every gather is an op of its own."""
  rows, row_weights, columns, column_weights = taps
  frame = frames[index]
  height, width = frame.shape[:2]
  half = jnp.einsum('hwc,tw->cht', frame.astype(row_weights.dtype),
                    resampling_matrix(columns, column_weights, width))
  image = jnp.einsum('sh,cht->cst', resampling_matrix(rows, row_weights, height), half)
  return tuple(image[c] for c in range(3))


def target_platform(platform: str | None) -> str:
  """The platform the augmentation is compiled for: ``platform``, or JAX's default backend."""
  return platform or jax.default_backend()


def resample(frames, index, taps, platform=None):
  """The crop's three channel planes, each (S, S), from the uint8 frame ``frames[index]``:
  gathered taps, or dots on a TPU."""
  if target_platform(platform) == 'tpu':
    return _resample_by_matmul(frames, index, taps)
  return _resample_by_taps(frames, index, taps)


def _planes(image):
  return tuple(image[..., c] for c in range(3))


def _image(planes):
  return jnp.stack(planes, axis=-1)


def crop_and_resize(frame, top, left, crop_height, crop_width, flip, output_size: int,
                    dtype=jnp.float32, platform=None):
  """(H, W, 3) uint8 -> (S, S, 3) in [0, 1]: antialiased bilinear resize of the box, flipped."""
  return _image(resample(frame, (), crop_taps(top, left, crop_height, crop_width, flip,
                                               frame.shape[:2], output_size, dtype), platform))


# ----------------------------------------------------------------------------- colour ops
# The crop's colour work runs on its three channel planes: every op is then elementwise on
# same-shaped arrays, with no broadcast of a computed plane over the channel axis and no
# slice of a computed image, either of which makes XLA write the plane out. The (..., H, W, 3)
# functions below are the same ops on images (torchvision's semantics; the tests hold them).

def _grey(planes):
  r, g, b = planes
  return LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b


def _blend(image, other, factor):
  """torchvision's ``_blend``: every ColorJitter op but hue is this, with its own ``other``."""
  return jnp.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def _hue_planes(planes, delta):
  """torchvision's float adjust_hue on channel planes: to HSV, shift the hue by ``delta``
  (mod 1), back.

  The same arithmetic as torchvision's up to rounding, elementwise throughout: the hue's
  numerator is selected before it is divided by the chroma (torchvision divides three
  differences, then selects), ``x - floor(x)`` is the mod 1 (equal bit for bit on these
  ranges), and the six sectors' RGB are ``v (1 - s k)`` with k in {0, 1, f, 1 - f} for
  (v, p, q, t).
  """
  r, g, b = planes
  maxc = jnp.maximum(jnp.maximum(r, g), b)
  minc = jnp.minimum(jnp.minimum(r, g), b)
  chroma = maxc - minc
  divisor = jnp.where(chroma == 0, 1.0, chroma)
  numerator = jnp.where(maxc == r, g - b, jnp.where(maxc == g, 2.0 * divisor + b - r,
                                                    4.0 * divisor + r - g))
  hue = numerator / divisor / 6.0 + 1.0  # in [5/6, 11/6]
  hue = hue - jnp.floor(hue)
  hue = hue + delta
  hue = hue - jnp.floor(hue)
  sector = jnp.floor(hue * 6.0)  # 0 to 5: hue < 1
  f = hue * 6.0 - sector

  def by_sector(*factors):
    chosen = factors[5]
    for k in range(4, -1, -1):
      chosen = jnp.where(sector == k, factors[k], chosen)
    return chosen

  # (R, G, B) of the six sectors of the hue circle: torchvision's (v, q, p, p, t, v),
  # (t, v, v, q, p, p), (p, p, t, v, v, q) with p, q, t = v (1 - s k) for k = 1, f, 1 - f.
  one_minus_f = 1.0 - f
  k = (by_sector(0.0, f, 1.0, 1.0, one_minus_f, 0.0),
       by_sector(one_minus_f, 0.0, 0.0, f, 1.0, 1.0),
       by_sector(1.0, 1.0, one_minus_f, 0.0, 0.0, f))
  # v (1 - s k) with v s = chroma: no division by v, whose several readers would make XLA
  # write the quotient out.
  return tuple(jnp.clip(maxc - chroma * k_c, 0.0, 1.0) for k_c in k)


def grayscale(image):
  """(..., H, W, 3) -> (..., H, W, 1) luma."""
  return _grey(_planes(image))[..., None]


def mean_grey(image):
  """The mean luma of (..., H, W, 3) images, keeping three unit axes (contrast's blend target)."""
  return jnp.mean(grayscale(image), axis=(-3, -2, -1), keepdims=True)


def adjust_brightness(image, factor):
  return _blend(image, 0.0, factor)


def adjust_contrast(image, factor):
  return _blend(image, mean_grey(image), factor)


def adjust_saturation(image, factor):
  return _blend(image, grayscale(image), factor)


def adjust_hue(image, delta):
  return _image(_hue_planes(_planes(image), delta))


def normalize(image):
  """[0, 1] RGB -> ImageNet-normalised."""
  mean = jnp.asarray(IMAGENET_MEAN, image.dtype)
  std = jnp.asarray(IMAGENET_STD, image.dtype)
  return (image - mean) / std


def normalize_uint8(frames, dtype=jnp.float32):
  """uint8 frames -> ImageNet-normalised ``dtype`` (the evaluation readers' centre crops)."""
  return normalize(frames.astype(dtype) / 255.0)


# ----------------------------------------------------------------------------- colour jitter

def jitter_slots(order):
  """Where each jitter op of ``order`` (op ids by position) runs in the fixed pass.

  The pass is three blend slots, the hue shift, three blend slots. Returns (positions (6,),
  ops (6,), hue's position): slot k < 3 holds position k if that comes before hue, slot 3 + k
  holds position hue + 1 + k if there is one, each with the op at that position; the other
  slots hold IDENTITY_OP. Every position but hue's lands in exactly one slot, in order.
  """
  hue_position = jnp.argmax(order == HUE).astype(jnp.int32)
  k = jnp.arange(NUM_JITTER_OPS - 1, dtype=jnp.int32)
  positions = jnp.concatenate([k, hue_position + 1 + k])
  held = jnp.concatenate([k < hue_position, hue_position + 1 + k < NUM_JITTER_OPS])
  ops = jnp.where(held, order[jnp.minimum(positions, NUM_JITTER_OPS - 1)], IDENTITY_OP)
  return positions, ops, hue_position


def _blend_slots(planes, params, slots, first_slot: int, end, contrast_mean, grey=_grey):
  """The three blend slots from ``first_slot`` (0: before the hue shift, 3: after it), each
  applying the op it holds if that op's position is before ``end``."""
  positions, ops, _ = slots
  factors = jnp.stack([params[name] for name in JITTER_OPS[:HUE]])
  for k in range(first_slot, first_slot + NUM_JITTER_OPS - 1):
    op = jnp.where(positions[k] < end, ops[k], IDENTITY_OP)
    other = jnp.where(op == SATURATION, grey(planes),
                      jnp.where(op == CONTRAST, contrast_mean, 0.0))
    factor = factors[jnp.clip(op, 0, HUE - 1)]
    planes = tuple(jnp.where(op == IDENTITY_OP, plane, _blend(plane, other, factor))
                   for plane in planes)
  return planes


def _grey_summed_backwards(planes):
  """_grey with its terms added in the other order. The reduction passes use it: were their
  first slot's grey the same expression as the colour pass's, XLA would compute it once for
  both and write it out (5.6 MB a video at K400 shapes)."""
  r, g, b = planes
  return LUMA_WEIGHTS[2] * b + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[0] * r


def _mean_grey(planes):
  """The mean luma of channel planes: the grey of the planes' means (grey is linear), as one
  reduction over the three planes. XLA:CPU hands single reductions to a library that takes a
  written-out input, while this one stays fused with the pass that computes its planes."""
  dtype = planes[0].dtype
  sums = jax.lax.reduce(planes, (jnp.zeros((), dtype),) * 3,
                        lambda a, b: tuple(x + y for x, y in zip(a, b)),
                        tuple(range(planes[0].ndim)))
  return _grey(sums) / planes[0].size


def _stored(image, store_dtype, platform):
  """``image`` rounded to ``store_dtype`` and left in it, where a pass of the augmentation
  writes its result for the next passes to read. On a CPU an optimisation barrier also keeps
  XLA's simplifications from merging the passes on either side, which XLA:CPU would then fuse
  and recompute everything before the barrier at every read (hundreds of times slower).
  XLA:GPU and XLA:TPU weigh recomputation against traffic themselves, and a barrier would
  cost them traffic (``benchmarks/train_step.py --aug_cost``)."""
  image = image.astype(store_dtype)
  if target_platform(platform) == 'cpu':
    image = jax.lax.optimization_barrier(image)
  return image


def _written(planes, store_dtype, platform):
  """The planes rounded to ``store_dtype`` as ``_stored`` rounds an image. On a CPU they are
  written as one image, so that one pass computes all three; elsewhere they stay planes (a
  TPU pads an image's channel axis of 3 to a full tile)."""
  dtype = planes[0].dtype
  if target_platform(platform) == 'cpu':
    return _planes(_stored(_image(planes), store_dtype, platform).astype(dtype))
  return tuple(plane.astype(store_dtype).astype(dtype) for plane in planes)


def _hue_slot(planes, params, slots, end):
  """The hue shift if its position is before ``end``."""
  shifted = _hue_planes(planes, params['hue'])
  return tuple(jnp.where(slots[2] < end, s, p) for s, p in zip(shifted, planes))


def _color_jitter_planes(planes, params, enabled, store_dtype, platform):
  """The jitter ops in their drawn order. Contrast needs the mean grey of the image as it
  stands at contrast's position: a reduction ahead of the pass that holds contrast recomputes
  that pass's ops before it.

  On a GPU or TPU: one reduction over the ops before contrast, then one pass, which XLA fuses
  (the augmentation moves 19% less than with the CPU's form on an H100, 12% less on a v5e).
  On a CPU: two passes split at the hue shift and written between them, each with its own
  reduction: XLA:CPU's emitters recompute shared values, so one reduction through the hue
  shift runs 2.4 times slower.
  """
  slots = jitter_slots(params['order'])
  end = jnp.where(enabled, NUM_JITTER_OPS, 0)
  contrast_end = jnp.minimum(jnp.argmax(params['order'] == CONTRAST), end)
  after_hue = NUM_JITTER_OPS - 1  # the first blend slot after the hue shift

  def mean_before_contrast(planes, first_slot: int, with_hue: bool):
    planes = _blend_slots(planes, params, slots, first_slot, contrast_end, 0.0,
                          _grey_summed_backwards)
    if with_hue:
      planes = _blend_slots(_hue_slot(planes, params, slots, contrast_end), params, slots,
                            after_hue, contrast_end, 0.0, _grey_summed_backwards)
    return _mean_grey(planes)

  if target_platform(platform) != 'cpu':
    mean = mean_before_contrast(planes, 0, with_hue=True)
    planes = _hue_slot(_blend_slots(planes, params, slots, 0, end, mean), params, slots, end)
    return _blend_slots(planes, params, slots, after_hue, end, mean)
  mean_before_hue = mean_before_contrast(planes, 0, with_hue=False)
  planes = _blend_slots(planes, params, slots, 0, end, mean_before_hue)
  planes = _written(_hue_slot(planes, params, slots, end), store_dtype, platform)
  mean_after_hue = mean_before_contrast(planes, after_hue, with_hue=False)
  mean = jnp.where(contrast_end < slots[2], mean_before_hue, mean_after_hue)
  return _blend_slots(planes, params, slots, after_hue, end, mean)


def color_jitter(image, params, enabled=True, platform=None):
  """The four jitter ops in ``params['order']`` on an (H, W, 3) image (none if not enabled)."""
  return _image(_color_jitter_planes(_planes(image), params, enabled, image.dtype, platform))


# ----------------------------------------------------------------------------- blur

def blur_radius(image_size: int, config: AugmentConfig) -> int:
  """Taps on each side of the blur kernel: 3 sigma of the largest sigma, so shapes are static."""
  return max(1, math.ceil(3 * config.blur_sigma[1] * image_size / BLUR_REFERENCE_SIZE))


def blur_taps(sigma, radius: int, dtype=jnp.float32):
  """The 2 radius + 1 normalised Gaussian taps (torchvision's ``_get_gaussian_kernel1d``)."""
  offsets = jnp.arange(-radius, radius + 1, dtype=dtype)
  taps = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  return taps / taps.sum()


def _reflected_sources(size: int, radius: int) -> np.ndarray:
  """(size, 2 radius + 1) source pixel of every tap, reflected without repeating the edge
  pixel ('reflect' padding): -1 -> 1, size -> size - 2."""
  sources = np.abs(np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None])
  return np.where(sources > size - 1, 2 * (size - 1) - sources, sources)


def blur_matrix(taps, size: int):
  """The (size, size) matrix of the 1D blur ``taps`` with reflected borders, in the taps'
  dtype: entry (i, j) sums the taps of output pixel i whose reflected source is j. Built
  elementwise, tap by tap (no gather, which a TPU would run as an op of its own, and no dot
  with a one-hot tensor, which XLA writes out in float32)."""
  sources = _reflected_sources(size, (taps.shape[0] - 1) // 2)
  return sum(jnp.where(sources[:, t, None] == np.arange(size), taps[t], 0)
             for t in range(taps.shape[0]))


def _blur_by_taps(image, taps, store_dtype=None, platform=None):
  """(H, W, C) blurred by the separable kernel ``taps`` with reflected borders, for a GPU or CPU.

  Columns first, as a sum of gathered taps: XLA counts a gathered operand as read once (shifted
  slices would each count as a read of the image), where a dot over the middle axis would need
  transposed copies around it. The half-blurred image is stored in ``store_dtype``. Then rows:
  gathered taps again where ``store_dtype`` is narrower than the image's dtype (a pass that
  reads and writes the image once); a dot of the (H, H) blur matrix with the half-blurred image
  over its leading axis, accumulated in the image's dtype, where it is not. The rounding keeps
  the two gathered passes apart; without it XLA:CPU fuses the first into each tap of the second
  and writes every tap out, and the step's augmentation runs four times slower.
  """
  dtype = image.dtype
  store_dtype = store_dtype or dtype
  radius = (taps.shape[0] - 1) // 2
  columns = _reflected_sources(image.shape[1], radius)
  image = sum(taps[t] * image[:, columns[:, t]] for t in range(taps.shape[0]))
  image = _stored(image, store_dtype, platform)
  if jnp.dtype(store_dtype).itemsize < jnp.dtype(dtype).itemsize:
    image = image.astype(dtype)
    rows = _reflected_sources(image.shape[0], radius)
    return sum(taps[t] * image[rows[:, t]] for t in range(taps.shape[0]))
  return jnp.einsum('sh,hwc->swc', blur_matrix(taps.astype(store_dtype), image.shape[0]),
                    image, preferred_element_type=dtype)


def _blur_by_matmul(image, taps, store_dtype=None):
  """_blur_by_taps as two dots with the blur matrices (no gathers, for a TPU)."""
  image = jnp.einsum('hwc,vw->hvc', image, blur_matrix(taps, image.shape[1]))
  image = image.astype(store_dtype or image.dtype).astype(image.dtype)
  return jnp.einsum('uh,hvc->uvc', blur_matrix(taps, image.shape[0]), image)


def gaussian_blur(image, taps, store_dtype=None, platform=None):
  """(H, W, C) blurred by the separable kernel ``taps`` with reflected borders (torchvision's
  ``gaussian_blur``): gathered taps then a dot, or two dots on a TPU; the image between them is
  stored in ``store_dtype`` (default the image's)."""
  if target_platform(platform) == 'tpu':
    return _blur_by_matmul(image, taps, store_dtype)
  return _blur_by_taps(image, taps, store_dtype, platform)


# ----------------------------------------------------------------------------- one crop

def _draws(key, config: AugmentConfig):
  """Every random number one crop uses, from its own key."""
  box_key, flip_key, coin_key, factor_key, order_key, sigma_key = jax.random.split(key, 6)
  coins = jax.random.uniform(coin_key, (3,))
  u = jax.random.uniform(factor_key, (NUM_JITTER_OPS,))
  return dict(
      box_key=box_key,
      flip=jax.random.uniform(flip_key) < config.flip_probability,
      jitter=coins[0] < config.jitter_probability,
      gray=coins[1] < config.grayscale_probability,
      blur=coins[2] < config.blur_probability,
      brightness=1 - config.brightness + 2 * config.brightness * u[0],
      contrast=1 - config.contrast + 2 * config.contrast * u[1],
      saturation=1 - config.saturation + 2 * config.saturation * u[2],
      hue=-config.hue + 2 * config.hue * u[3],
      order=jax.random.permutation(order_key, NUM_JITTER_OPS),
      sigma=jax.random.uniform(sigma_key, minval=config.blur_sigma[0],
                               maxval=config.blur_sigma[1]),
  )


def crop_params(key, height: int, width: int, config: AugmentConfig):
  """The drawn parameters of one crop (box, flip, colour), as a dict of scalars."""
  draws = _draws(key, config)
  top, left, h, w = random_resized_crop_box(draws.pop('box_key'), height, width,
                                            config.crop_scale, config.crop_ratio)
  return dict(draws, top=top, left=left, height=h, width=w)


def _augment(frames, index, params, output_size: int, config: AugmentConfig, dtype,
             store_dtype, platform):
  """The ImageNet-normalised (S, S, 3) crop of the frame ``frames[index]`` (H, W, 3), computed
  in ``dtype``, written (as are the passes' intermediates) in ``store_dtype``."""
  # The drawn factors are float64 under jax_enable_x64; the crop is computed in ``dtype``.
  params = {name: value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value
            for name, value in params.items()}
  taps = crop_taps(params['top'], params['left'], params['height'], params['width'],
                   params['flip'], frames.shape[-3:-1], output_size, dtype)
  planes = resample(frames, index, taps, platform)
  # Ops with probability 0 are left out of the graph (TSN's crops-only recipe).
  if config.jitter_probability > 0:
    # The jitter's first pass and its reduction both read the crop.
    planes = _color_jitter_planes(_written(planes, store_dtype, platform), params,
                                  params['jitter'], store_dtype, platform)
  if config.grayscale_probability > 0:
    grey = _grey(planes)
    planes = tuple(jnp.where(params['gray'], grey, plane) for plane in planes)
  image = normalize(_image(planes))
  if config.blur_probability > 0:
    # Blurring the normalised crop is blurring the crop then normalising (the taps sum to
    # one), and lets the colour pass end in the blur's first half.
    radius = blur_radius(output_size, config)
    taps = blur_taps(params['sigma'] * output_size / BLUR_REFERENCE_SIZE, radius, dtype)
    identity = jnp.zeros_like(taps).at[radius].set(1.0)
    image = gaussian_blur(image, jnp.where(params['blur'], taps, identity), store_dtype,
                          platform)
  return image.astype(store_dtype)


def augment_crop(frame, params, output_size: int, config: AugmentConfig, dtype=jnp.float32,
                 platform=None):
  """One (H, W, 3) uint8 frame and its drawn parameters -> one ImageNet-normalised (S, S, 3)
  crop."""
  return _augment(frame, (), params, output_size, config, dtype, dtype, platform)


def augment_frames(frames, sources, keys, output_size: int, config: AugmentConfig,
                   dtype=jnp.float32, store_dtype=None, platform=None):
  """Crops of ``frames[b, sources[b, c]]`` with ``keys[b, c]``, vectorised.

  frames: (B, N, H, W, 3) uint8 frames, or (B, N, L, H, W, 3) clips of L frames, whose frames
  all get their crop's one set of draws; sources: (B, C) int32 frame (clip) of every crop;
  keys: (B, C) typed keys. Returns (B, C, S, S, 3), or (B, C, L, S, S, 3) for clips,
  ImageNet-normalised, computed in ``dtype`` and written in ``store_dtype`` (default
  ``dtype``), as is every intermediate image the augmentation writes between its passes.
  ``platform``: what the crops are compiled for ('cpu', 'gpu', 'tpu'; default JAX's default
  backend), which picks the form of the crop, the blur and the passes' ends.
  """
  store_dtype = store_dtype or dtype
  height, width = frames.shape[-3:-1]
  params = jax.vmap(jax.vmap(lambda k: crop_params(k, height, width, config)))(keys)

  def one(example_frames, source, p):
    if frames.ndim == 6:
      clip = jnp.arange(frames.shape[2])
      return jax.vmap(lambda l: _augment(example_frames, (source, l), p, output_size, config,
                                         dtype, store_dtype, platform))(clip)
    return _augment(example_frames, (source,), p, output_size, config, dtype, store_dtype,
                    platform)

  return jax.vmap(jax.vmap(one, in_axes=(None, 0, 0)))(frames, sources, params)


def example_keys(key, global_indices, crops_per_example: int):
  """(B, C) crop keys from a step key and the examples' global indices in the batch."""
  per_example = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i),
                                                    crops_per_example))
  return per_example(global_indices)
