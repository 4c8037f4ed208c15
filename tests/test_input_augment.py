"""MoCo v2 augmentation: shapes, normalisation, crop geometry, colour ops, probabilities.

Reference computations are written here in NumPy from torchvision's definitions.
"""

import colorsys
import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import augment

NO_COLOUR = augment.AugmentConfig(jitter_probability=0.0, grayscale_probability=0.0,
                                  blur_probability=0.0)


def _seed(i):
  return tf.random.experimental.stateless_fold_in(tf.constant([11, 0], tf.int64), i)


def _many(fn, draws):
  """fn(seed) for ``draws`` seeds, run as one graph; returns NumPy (stacked)."""
  result = tf.data.Dataset.range(draws).map(lambda i: fn(_seed(i))).batch(draws)
  return tf.nest.map_structure(lambda t: t.numpy(), result.get_single_element())


def _torchvision_crop_params(rng, height, width, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision.transforms.RandomResizedCrop.get_params, in NumPy."""
  area = height * width
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
  raise AssertionError('the fallback is tested separately')


def test_output_shapes_dtypes_and_normalisation_of_a_constant_image():
  colour = np.array([200, 100, 30], np.uint8)
  images = tf.constant(np.broadcast_to(colour, (2, 30, 40, 3)))
  out = augment.moco_v2_augment(images, tf.constant([0, 1, 1]),
                                tf.random.experimental.stateless_split([1, 2], 3), 24, NO_COLOUR)
  assert out.shape == (3, 24, 24, 3) and out.dtype == tf.float32
  expected = (colour / 255 - np.array(augment.IMAGENET_MEAN)) / np.array(augment.IMAGENET_STD)
  np.testing.assert_allclose(out.numpy(), np.broadcast_to(expected, out.shape), atol=1e-5)
  full = augment.moco_v2_augment(images, tf.constant([0]), tf.constant([[5, 6]]), 24)
  assert full.shape == (1, 24, 24, 3) and full.dtype == tf.float32


def test_crop_boxes_follow_torchvision_statistics():
  height, width, draws = 256, 340, 3000
  top, left, h, w = _many(lambda s: augment.random_resized_crop_box(s, height, width), draws)
  assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
  area, aspect = h * w / (height * width), w / h
  # Rounding to whole pixels moves area and aspect slightly past the configured ranges.
  assert area.min() >= 0.2 - 0.01 and area.max() <= 1.0
  assert aspect.min() >= 3 / 4 - 0.01 and aspect.max() <= 4 / 3 + 0.01
  rng = np.random.default_rng(0)
  reference = np.array([_torchvision_crop_params(rng, height, width) for _ in range(draws)])
  ref_area = reference[:, 2] * reference[:, 3] / (height * width)
  ref_aspect = reference[:, 3] / reference[:, 2]
  tolerance = 4 / math.sqrt(draws)
  assert abs(area.mean() - ref_area.mean()) < tolerance * ref_area.std()
  assert abs(np.log(aspect).mean() - np.log(ref_aspect).mean()) < tolerance * np.log(
      ref_aspect).std()
  assert abs(((top + h / 2) / height).mean() - 0.5) < 0.02  # Offsets are centred on average.


def test_crop_falls_back_to_the_centre_when_nothing_fits():
  top, left, h, w = (int(v) for v in augment.random_resized_crop_box([0, 1], 10, 1000))
  assert (h, w) == (10, round(10 * 4 / 3))
  assert (top, left) == (0, (1000 - w) // 2)


@pytest.mark.parametrize('box, flip', [((3, 5, 20, 12), False), ((0, 0, 8, 10), True),
                                        ((10, 17, 22, 23), False)])
def test_crop_resampling_matches_half_pixel_bilinear(box, flip):
  """crop_and_resize with our box == torchvision's crop + bilinear resize (antialias off)."""
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (32, 40, 3)).astype(np.float32)
  top, left, h, w = box
  size = 16
  sampling_box = augment.crop_box_to_sampling_box(top, left, h, w, 32, 40, size, flip)
  padded = tf.pad(image[None], [[0, 0], [1, 1], [1, 1], [0, 0]], 'SYMMETRIC')
  ours = tf.image.crop_and_resize(padded, sampling_box[None], [0], [size, size])[0].numpy()

  def source_positions(start, extent, limit):
    positions = start + (np.arange(size) + 0.5) * extent / size - 0.5
    return np.clip(positions, 0, limit - 1)

  ys, xs = source_positions(top, h, 32), source_positions(left, w, 40)
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, 31), np.minimum(x0 + 1, 39)
  wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  reference = ((1 - wy) * (1 - wx) * image[y0][:, x0] + (1 - wy) * wx * image[y0][:, x1] +
               wy * (1 - wx) * image[y1][:, x0] + wy * wx * image[y1][:, x1])
  if flip:
    reference = reference[:, ::-1]
  np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_colour_ops_match_torchvision_definitions():
  rng = np.random.default_rng(2)
  image = rng.uniform(0, 1, (6, 7, 3)).astype(np.float32)
  gray = image @ np.array(augment.LUMA_WEIGHTS, np.float32)
  np.testing.assert_allclose(augment.adjust_brightness(image, 1.3), np.clip(image * 1.3, 0, 1),
                             atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(image, 0.7),
                             np.clip(0.7 * image + 0.3 * gray.mean(), 0, 1), atol=1e-6)
  np.testing.assert_allclose(augment.adjust_saturation(image, 1.4),
                             np.clip(1.4 * image + (-0.4) * gray[..., None], 0, 1), atol=1e-6)
  shifted = np.array([colorsys.hsv_to_rgb((h + 0.08) % 1.0, s, v) for h, s, v in
                      (colorsys.rgb_to_hsv(*pixel) for pixel in image.reshape(-1, 3))])
  np.testing.assert_allclose(augment.adjust_hue(image, 0.08), shifted.reshape(image.shape),
                             atol=1e-5)


def test_gaussian_blur_kernel_has_the_drawn_sigma():
  impulse = np.zeros((31, 31, 3), np.float32)
  impulse[15, 15] = 1.0
  sigma = 1.5
  blurred = augment.gaussian_blur(impulse, sigma, radius=6).numpy()[..., 0]
  assert abs(blurred.sum() - 1.0) < 1e-5
  offsets = np.arange(31) - 15
  variance = (blurred.sum(axis=0) * offsets ** 2).sum()
  assert abs(variance - sigma ** 2) < 0.05  # Truncation at 4 sigma loses almost nothing.
  np.testing.assert_allclose(blurred, blurred.T, atol=1e-7)


def test_flip_and_grayscale_frequencies():
  draws = 1000
  left_red_right_blue = np.zeros((1, 20, 20, 3), np.uint8)
  left_red_right_blue[0, :, :10, 0] = 255
  left_red_right_blue[0, :, 10:, 2] = 255
  config = augment.AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                 jitter_probability=0.0, blur_probability=0.0)
  images = tf.constant(left_red_right_blue)
  out = _many(lambda s: augment.moco_v2_augment(images, tf.constant([0]), s[None], 20, config)[0],
              draws)
  pixels = out * augment.IMAGENET_STD + augment.IMAGENET_MEAN
  gray = np.all(np.abs(pixels - pixels[..., :1]) < 1e-4, axis=(1, 2, 3))
  colour = pixels[~gray]
  flipped = colour[:, 10, 0, 2] > colour[:, 10, 0, 0]  # The left edge is blue.
  assert abs(gray.mean() - 0.2) < 5 * math.sqrt(0.2 * 0.8 / draws)
  assert abs(flipped.mean() - 0.5) < 5 * math.sqrt(0.25 / len(flipped))


def test_jitter_and_blur_probabilities():
  draws = 600
  rng = np.random.default_rng(3)
  images = tf.constant(rng.integers(0, 256, (1, 16, 16, 3)).astype(np.uint8))
  # The largest sigma always: small ones barely change a 64 px crop (sigma scales with size).
  base = augment.AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                               flip_probability=0.0, grayscale_probability=0.0,
                               blur_sigma=(2.0, 2.0))
  untouched = dataclasses.replace(base, jitter_probability=0.0, blur_probability=0.0)
  identity = augment.moco_v2_augment(images, tf.constant([0]), tf.constant([[0, 0]]), 64,
                                     untouched)[0].numpy()
  for config, expected in ((dataclasses.replace(base, blur_probability=0.0), 0.8),
                           (dataclasses.replace(base, jitter_probability=0.0), 0.5)):
    out = _many(lambda s, config=config: augment.moco_v2_augment(
        images, tf.constant([0]), s[None], 64, config)[0], draws)
    changed = np.abs(out - identity).max(axis=(1, 2, 3)) > 1e-4
    assert abs(changed.mean() - expected) < 5 * math.sqrt(expected * (1 - expected) / draws)
