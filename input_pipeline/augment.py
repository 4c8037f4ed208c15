"""MoCo v2 frame augmentation in TensorFlow with stateless random ops (REFERENCE.md).

Every random choice comes from a per-frame seed (a (2,) int tensor), so the same seed always
gives the same crop whatever thread or host computes it. Colours follow torchvision's float
semantics (MoCo runs them on uint8 PIL images: the results differ by rounding only).

Pipeline per frame, in MoCo v2's order: RandomResizedCrop (area 0.2-1, aspect 3/4-4/3,
bilinear), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8 in a random order, RandomGrayscale
p=0.2, Gaussian blur sigma U(0.1, 2) with p=0.5, horizontal flip p=0.5, scale to [0, 1],
ImageNet normalisation. The flip is folded into the crop (a mirrored box): colour ops are
per pixel and the blur kernel is symmetric, so flipping last or first gives the same image.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
# MoCo's blur sigma is in pixels of a 224 px crop; other sizes scale it to blur the same content.
BLUR_REFERENCE_SIZE = 224
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before the centre fallback.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """The MoCo v2 recipe; every field can be changed through the readers' options."""
  crop_scale: tuple[float, float] = (0.2, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  jitter_probability: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  grayscale_probability: float = 0.2
  blur_probability: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  flip_probability: float = 0.5


def _uniform(seed, shape=(), low=0.0, high=1.0):
  return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def random_resized_crop_box(seed, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params: (top, left, crop_height, crop_width) int32.

  Draws 10 (area, log-aspect) candidates, takes the first that fits in the image, else falls
  back to the largest centred box with the aspect clamped to ``ratio``.
  """
  area_seed, ratio_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  height_f, width_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  target_area = height_f * width_f * _uniform(area_seed, [CROP_ATTEMPTS], *scale)
  aspect = tf.exp(_uniform(ratio_seed, [CROP_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
  crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first_fit = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  in_ratio = width_f / height_f
  fallback_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(height_f * ratio[1]), tf.int32),
                        width)
  fallback_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(width_f / ratio[0]), tf.int32),
                        height)
  any_fit = tf.reduce_any(fits)
  box_h = tf.where(any_fit, crop_h[first_fit], fallback_h)
  box_w = tf.where(any_fit, crop_w[first_fit], fallback_w)
  # randint(0, H - h + 1) for a fitted box; the fallback is centred.
  offsets = _uniform(offset_seed, [2])
  top = tf.where(any_fit, tf.cast(offsets[0] * tf.cast(height - box_h + 1, tf.float32), tf.int32),
                 (height - box_h) // 2)
  left = tf.where(any_fit, tf.cast(offsets[1] * tf.cast(width - box_w + 1, tf.float32), tf.int32),
                  (width - box_w) // 2)
  return (tf.minimum(top, height - box_h), tf.minimum(left, width - box_w), box_h, box_w)


def crop_box_to_sampling_box(top, left, crop_height, crop_width, height, width, output_size,
                             flip):
  """Normalised crop_and_resize box that resamples the crop like torchvision (half-pixel
  centres, bilinear, edge clamped) in an image padded by one edge pixel on every side.

  crop_and_resize samples output pixel i at ``y1 * (H' - 1) + i * (y2 - y1) * (H' - 1) /
  (S - 1)``; torchvision at ``top + (i + 0.5) * h / S - 0.5``. The one-pixel padding turns
  torchvision's clamping at the border into plain interpolation. ``flip`` swaps x1 and x2,
  which mirrors the sampled crop.
  """
  size = tf.cast(output_size, tf.float32)

  def ends(start, extent, padded_extent):
    start, extent = tf.cast(start, tf.float32), tf.cast(extent, tf.float32)
    first = start + 0.5 * extent / size - 0.5 + 1.0  # +1: the padding.
    last = start + (size - 0.5) * extent / size - 0.5 + 1.0
    denominator = tf.cast(padded_extent - 1, tf.float32)
    return first / denominator, last / denominator

  y1, y2 = ends(top, crop_height, height + 2)
  x1, x2 = ends(left, crop_width, width + 2)
  return tf.where(flip, tf.stack([y1, x2, y2, x1]), tf.stack([y1, x1, y2, x2]))


def grayscale(image):
  """(..., 3) -> (..., 1) luma."""
  return tf.reduce_sum(image * tf.constant(LUMA_WEIGHTS, image.dtype), axis=-1, keepdims=True)


def adjust_brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  # torchvision blends with the mean grey level of the whole image.
  return tf.clip_by_value(factor * image + (1 - factor) * tf.reduce_mean(grayscale(image)),
                          0.0, 1.0)


def adjust_saturation(image, factor):
  return tf.clip_by_value(factor * image + (1 - factor) * grayscale(image), 0.0, 1.0)


def adjust_hue(image, delta):
  return tf.image.adjust_hue(image, delta)


def color_jitter(image, seed, config: AugmentConfig):
  """torchvision ColorJitter on a float [0, 1] image: four factors, applied in random order."""
  factor_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  u = _uniform(factor_seed, [4])
  brightness = 1 - config.brightness + 2 * config.brightness * u[0]
  contrast = 1 - config.contrast + 2 * config.contrast * u[1]
  saturation = 1 - config.saturation + 2 * config.saturation * u[2]
  hue = -config.hue + 2 * config.hue * u[3]
  order = tf.argsort(_uniform(order_seed, [4]))  # randperm(4), int32
  for step in range(4):
    image = tf.switch_case(order[step], [
        lambda image=image: adjust_brightness(image, brightness),
        lambda image=image: adjust_contrast(image, contrast),
        lambda image=image: adjust_saturation(image, saturation),
        lambda image=image: adjust_hue(image, hue),
    ])
  return image


def blur_kernel_radius(image_size: int, config: AugmentConfig) -> int:
  """Taps on each side of the blur kernel: 3 sigma of the largest sigma, so shapes are static."""
  return max(1, math.ceil(3 * config.blur_sigma[1] * image_size / BLUR_REFERENCE_SIZE))


def gaussian_blur(image, sigma, radius: int):
  """Separable Gaussian blur of a (S, S, 3) image with reflected borders.

  MoCo uses PIL's GaussianBlur(radius=sigma), whose support is unbounded; 3 sigma keeps
  99.7% of the kernel mass (13 taps at sigma 2 and 224 px, i.e. about 6% of the image).
  """
  offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-0.5 * tf.square(offsets / sigma))
  weights /= tf.reduce_sum(weights)
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], 'REFLECT')
  vertical = tf.tile(tf.reshape(weights, [-1, 1, 1, 1]), [1, 1, 3, 1])
  horizontal = tf.reshape(vertical, [1, -1, 3, 1])
  blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], 'VALID')
  blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], 'VALID')
  return blurred[0]


def normalize(image):
  """[0, 1] RGB -> ImageNet-normalised."""
  return (image - tf.constant(IMAGENET_MEAN)) / tf.constant(IMAGENET_STD)


def decode_frames(jpegs):
  """(N,) JPEG strings -> (N, H, W, 3) uint8; frames of one video share a size."""
  return tf.map_fn(lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), jpegs,
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def random_resized_crops(images, sources, seeds, output_size: int, config: AugmentConfig):
  """Random resized crops (and flips) of ``images[sources[i]]`` with ``seeds[i]``.

  images: (N, H, W, 3) uint8 of one video; sources: (M,) int32; seeds: (M, 2).
  Returns (M, S, S, 3) float32 in [0, 1]. One crop_and_resize call samples all M crops.
  """
  height, width = tf.shape(images)[1], tf.shape(images)[2]
  padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], 'SYMMETRIC')

  def sampling_box(seed):
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    top, left, crop_h, crop_w = random_resized_crop_box(
        crop_seed, height, width, config.crop_scale, config.crop_ratio)
    do_flip = _uniform(flip_seed) < config.flip_probability
    return crop_box_to_sampling_box(top, left, crop_h, crop_w, height, width, output_size,
                                    do_flip)

  # map_fn traces the per-crop graph once (an unrolled loop makes tf.data start slowly).
  boxes = tf.map_fn(sampling_box, seeds, fn_output_signature=tf.float32)
  crops = tf.image.crop_and_resize(padded, boxes, sources, [output_size, output_size],
                                   method='bilinear')
  return crops / 255.0


def color_augment(image, seed, image_size: int, config: AugmentConfig):
  """Jitter (p), grayscale (p), blur (p) of one (S, S, 3) [0, 1] crop, then normalisation."""
  jitter_seed, gray_seed, blur_seed, coin_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  coins = _uniform(coin_seed, [3])
  image = tf.cond(coins[0] < config.jitter_probability,
                  lambda: color_jitter(image, jitter_seed, config), lambda: image)
  image = tf.cond(coins[1] < config.grayscale_probability,
                  lambda: tf.tile(grayscale(image), [1, 1, 3]), lambda: image)
  sigma = _uniform(blur_seed, (), *config.blur_sigma) * image_size / BLUR_REFERENCE_SIZE
  image = tf.cond(coins[2] < config.blur_probability,
                  lambda: gaussian_blur(image, sigma, blur_kernel_radius(image_size, config)),
                  lambda: image)
  return normalize(image)


def moco_v2_augment(images, sources, seeds, image_size: int,
                    config: AugmentConfig = AugmentConfig()):
  """The full MoCo v2 augmentation of ``images[sources[i]]``, independently per output.

  images: (N, H, W, 3) uint8; sources: (M,) int32; seeds: (M, 2) int. Returns (M, S, S, 3)
  float32, ImageNet-normalised.
  """
  crop_seeds, color_seeds = tf.unstack(
      tf.map_fn(lambda seed: tf.random.experimental.stateless_split(seed, 2), seeds), axis=1)
  crops = random_resized_crops(images, sources, crop_seeds, image_size, config)
  return tf.map_fn(lambda crop_and_seed: color_augment(*crop_and_seed, image_size, config),
                   (crops, color_seeds), fn_output_signature=tf.float32)
