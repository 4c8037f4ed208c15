"""MoCo v2 augmentation on the accelerator: pure, batched JAX on uint8 frames (REFERENCE.md).

The host ships decoded uint8 frames; everything per pixel happens here, inside the jitted
step, vectorised over every crop of the per-device batch. Per crop, in MoCo v2's order:

1. RandomResizedCrop (area 0.2-1, aspect 3/4-4/3, torchvision's ``get_params``) with
   bilinear, antialiased resampling (PIL's filter, which MoCo's PIL pipeline uses, and
   torchvision's ``antialias=True``). The crop is two matmuls, ``Wy @ frame @ Wx^T``, with
   interpolation matrices built from the box: no gather, good on tensor cores and the MXU.
   The horizontal flip (p 0.5) reverses the rows of ``Wx``; every later op commutes with it
   (per-pixel colour, a global mean, a symmetric blur kernel).
2. ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, the four ops in a random order per crop.
   Branch-free: each of the four steps computes the four ops and selects one.
3. RandomGrayscale p 0.2; 4. Gaussian blur with sigma U(0.1, 2) and p 0.5, as two matmuls
   with reflected borders (torchvision's ``gaussian_blur``); 5. /255 and ImageNet normalisation.

Semantics are torchvision's float-tensor ones. dm-pix was considered: its brightness is
additive, its contrast uses per-channel means and its saturation goes through HSV, so it
would not match MoCo's recipe.

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
NUM_JITTER_OPS = 4


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


def resize_weights(start, extent, size: int, output_size: int, dtype=jnp.float32):
  """(output_size, size) antialiased bilinear weights that resample [start, start + extent).

  Output pixel i is centred at ``start + (i + 0.5) * extent / output_size`` in source pixels;
  input pixel j (centre j + 0.5) weighs ``max(0, 1 - |j + 0.5 - centre| / support)`` with
  ``support = max(extent / output_size, 1)`` (the triangle filter stretched when shrinking,
  as PIL and torchvision's antialias do), restricted to the crop and normalised.
  """
  start = jnp.asarray(start, dtype)
  extent = jnp.asarray(extent, dtype)
  step = extent / output_size
  centres = start + (jnp.arange(output_size, dtype=dtype) + 0.5) * step
  support = jnp.maximum(step, 1.0)
  pixels = jnp.arange(size, dtype=dtype) + 0.5
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(pixels[None] - centres[:, None]) / support)
  inside = (pixels >= start) & (pixels < start + extent)
  weights = weights * inside[None]
  return weights / weights.sum(axis=1, keepdims=True)


def blur_weights(sigma, size: int, radius: int, dtype=jnp.float32):
  """(size, size) Gaussian blur matrix: 2 radius + 1 taps, reflected borders (torchvision)."""
  offsets = jnp.arange(-radius, radius + 1, dtype=dtype)
  taps = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  taps = taps / taps.sum()
  # Reflection without repeating the edge pixel ('reflect' padding): -1 -> 1, size -> size - 2.
  sources = np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None]
  sources = np.abs(sources)
  sources = np.where(sources > size - 1, 2 * (size - 1) - sources, sources)
  one_hot = jnp.asarray(sources[..., None] == np.arange(size), dtype)  # (size, taps, size)
  return jnp.einsum('t,itj->ij', taps, one_hot)


def blur_radius(image_size: int, config: AugmentConfig) -> int:
  """Taps on each side of the blur kernel: 3 sigma of the largest sigma, so shapes are static."""
  return max(1, math.ceil(3 * config.blur_sigma[1] * image_size / BLUR_REFERENCE_SIZE))


# ----------------------------------------------------------------------------- colour ops
# Images are (..., H, W, 3) floats in [0, 1]; factors are scalars (vmapped per crop).

def grayscale(image):
  """(..., H, W, 3) -> (..., H, W, 1) luma."""
  return jnp.sum(image * jnp.asarray(LUMA_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def _blend(image, other, factor):
  return jnp.clip(factor * image + (1 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  # torchvision blends with the mean grey level of the whole image.
  return _blend(image, jnp.mean(grayscale(image), axis=(-3, -2, -1), keepdims=True), factor)


def adjust_saturation(image, factor):
  return _blend(image, grayscale(image), factor)


def adjust_hue(image, delta):
  """torchvision's float adjust_hue: to HSV, shift the hue by ``delta`` (mod 1), back."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  maxc = jnp.max(image, axis=-1)
  minc = jnp.min(image, axis=-1)
  equal = maxc == minc
  chroma = maxc - minc
  saturation = chroma / jnp.where(equal, 1.0, maxc)
  divisor = jnp.where(equal, 1.0, chroma)
  rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
  hue = jnp.where(maxc == r, bc - gc, jnp.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
  hue = jnp.mod(hue / 6.0 + 1.0, 1.0)
  hue = jnp.mod(hue + delta, 1.0)
  value = maxc
  sector = jnp.floor(hue * 6.0)
  f = hue * 6.0 - sector
  sector = sector.astype(jnp.int32) % 6
  p = jnp.clip(value * (1.0 - saturation), 0.0, 1.0)
  q = jnp.clip(value * (1.0 - saturation * f), 0.0, 1.0)
  t = jnp.clip(value * (1.0 - saturation * (1.0 - f)), 0.0, 1.0)
  # (R, G, B) of the six sectors of the hue circle.
  table = jnp.stack([jnp.stack(c, -1) for c in ((value, t, p), (q, value, p), (p, value, t),
                                                 (p, q, value), (t, p, value), (value, p, q))])
  return jnp.take_along_axis(table, sector[None, ..., None], axis=0)[0]


def normalize(image):
  """[0, 1] RGB -> ImageNet-normalised."""
  mean = jnp.asarray(IMAGENET_MEAN, image.dtype)
  std = jnp.asarray(IMAGENET_STD, image.dtype)
  return (image - mean) / std


def normalize_uint8(frames, dtype=jnp.float32):
  """uint8 frames -> ImageNet-normalised ``dtype`` (the evaluation readers' centre crops)."""
  return normalize(frames.astype(dtype) / 255.0)


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


def crop_and_resize(frame, top, left, crop_height, crop_width, flip, output_size: int,
                    dtype=jnp.float32):
  """(H, W, 3) uint8 -> (S, S, 3) in [0, 1]: antialiased bilinear resize of the box, flipped."""
  height, width = frame.shape[:2]
  wy = resize_weights(top, crop_height, height, output_size, dtype)
  wx = resize_weights(left, crop_width, width, output_size, dtype)
  wx = jnp.where(flip, wx[::-1], wx)
  crop = jnp.einsum('sh,hwc,tw->stc', wy, frame.astype(dtype), wx)
  return crop / 255.0


def color_jitter(image, params):
  """The four jitter ops in ``params['order']``; each step computes all four and selects.

  A loop rather than four unrolled steps: the graph holds each op once instead of four times,
  which cuts the train step's compile time (the hue op alone is a dozen fused kernels).
  """
  ops = (lambda x: adjust_brightness(x, params['brightness']),
         lambda x: adjust_contrast(x, params['contrast']),
         lambda x: adjust_saturation(x, params['saturation']),
         lambda x: adjust_hue(x, params['hue']))

  def apply_position(position, image):
    return jnp.stack([op(image) for op in ops])[params['order'][position]]

  return jax.lax.fori_loop(0, NUM_JITTER_OPS, apply_position, image)


def augment_crop(frame, params, output_size: int, config: AugmentConfig, dtype=jnp.float32):
  """One frame and its drawn parameters -> one ImageNet-normalised (S, S, 3) crop."""
  # The drawn factors are float64 under jax_enable_x64; the crop is computed in ``dtype``.
  params = {name: value.astype(dtype) if jnp.issubdtype(value.dtype, jnp.floating) else value
            for name, value in params.items()}
  image = crop_and_resize(frame, params['top'], params['left'], params['height'],
                          params['width'], params['flip'], output_size, dtype)
  # Ops with probability 0 are left out of the graph (TSN's crops-only recipe).
  if config.jitter_probability > 0:
    image = jnp.where(params['jitter'], color_jitter(image, params), image)
  if config.grayscale_probability > 0:
    image = jnp.where(params['gray'], jnp.broadcast_to(grayscale(image), image.shape), image)
  if config.blur_probability > 0:
    sigma = params['sigma'] * output_size / BLUR_REFERENCE_SIZE
    blur = blur_weights(sigma, output_size, blur_radius(output_size, config), dtype)
    blur = jnp.where(params['blur'], blur, jnp.eye(output_size, dtype=dtype))
    image = jnp.einsum('sh,hwc,tw->stc', blur, image, blur)
  return normalize(image)


def augment_frames(frames, sources, keys, output_size: int, config: AugmentConfig,
                   dtype=jnp.float32):
  """Crops of ``frames[b, sources[b, c]]`` with ``keys[b, c]``, vectorised.

  frames: (B, N, H, W, 3) uint8 frames, or (B, N, L, H, W, 3) clips of L frames, whose frames
  all get their crop's one set of draws; sources: (B, C) int32 frame (clip) of every crop;
  keys: (B, C) typed keys. Returns (B, C, S, S, 3), or (B, C, L, S, S, 3) for clips,
  ImageNet-normalised ``dtype``.
  """
  height, width = frames.shape[-3:-1]
  params = jax.vmap(jax.vmap(lambda k: crop_params(k, height, width, config)))(keys)
  chosen = jnp.take_along_axis(frames, sources.reshape(sources.shape + (1,) * (frames.ndim - 2)),
                               axis=1)
  one = lambda f, p: augment_crop(f, p, output_size, config, dtype)
  if frames.ndim == 6:
    one = jax.vmap(one, in_axes=(0, None))
  return jax.vmap(jax.vmap(one))(chosen, params)


def example_keys(key, global_indices, crops_per_example: int):
  """(B, C) crop keys from a step key and the examples' global indices in the batch."""
  per_example = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i),
                                                    crops_per_example))
  return per_example(global_indices)
