"""JPEG frames of a record -> uint8 arrays of a fixed shape, the readers' only pixel work."""

from __future__ import annotations

import tensorflow as tf


def fill_canvas(image, frame_size: tuple[int, int]):
  """(h, w, 3) uint8 -> (H, W, 3) uint8: scaled (antialiased bilinear, aspect kept) until it
  covers the canvas, then centre-cropped. Shapes are never stretched, so pretraining crops
  see objects as the evaluation's short-side resize and centre crop does."""
  height, width = frame_size
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = tf.maximum(height / shape[0], width / shape[1])
  covering = tf.maximum(tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32), [height, width])
  resized = tf.image.resize(image, covering, method='bilinear', antialias=True)
  resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
  top = (covering[0] - height) // 2
  left = (covering[1] - width) // 2
  return resized[top:top + height, left:left + width]


JPEG_START = b'\xff\xd8'  # SOI marker: every JPEG starts with it


def checked_jpegs(jpegs):
  """``jpegs`` once each starts like a JPEG; fails otherwise (before libjpeg sees the bytes,
  which would print a dozen lines per bad frame). Readers skip an example that fails
  (record_stream.skip_damaged)."""
  starts = tf.strings.substr(jpegs, 0, len(JPEG_START)) == JPEG_START
  check = tf.debugging.assert_equal(tf.reduce_all(starts), True, message='not a JPEG')
  with tf.control_dependencies([check]):
    return tf.identity(jpegs)


def decode_onto_canvas(jpegs, count: int, frame_size: tuple[int, int]):
  """(count,) JPEG strings -> (count, H, W, 3) uint8 on the (H, W) = ``frame_size`` canvas.

  Frames already of that size (the K400/UCF101/HMDB51 recipes prepare at 340x256) are only
  decoded. Others go through fill_canvas, which costs about as much as the decode again
  (docs/data.md). The decodes are unrolled: ``count`` is static, and a map_fn over six frames
  costs more than the decodes of small frames.
  """
  height, width = frame_size
  jpegs = checked_jpegs(jpegs)
  frames = []
  for i in range(count):
    image = tf.io.decode_jpeg(jpegs[i], channels=3)
    same = tf.reduce_all(tf.shape(image)[:2] == tf.constant([height, width]))
    image = tf.cond(same, lambda image=image: image,
                    lambda image=image: fill_canvas(image, frame_size))
    frames.append(tf.ensure_shape(image, [height, width, 3]))
  return tf.stack(frames)


def decode_frames(jpegs):
  """(N,) JPEG strings of one video (one size) -> (N, H, W, 3) uint8."""
  return tf.map_fn(lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), checked_jpegs(jpegs),
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def center_crop(images, crop_size: int, resize_short_side: int | None):
  """(N, H, W, 3) uint8 -> (N, crop, crop, 3) uint8, centre crop.

  Without ``resize_short_side`` frames are cropped as they are (the reference crops 224 out of
  340x256); frames smaller than the crop are padded with black. With it, frames are first
  resized (bilinear, antialiased) so that their short side has that many pixels.
  """
  if resize_short_side:
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    scale = resize_short_side / tf.cast(tf.minimum(height, width), tf.float32)
    new_size = tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) * scale),
                       tf.int32)
    resized = tf.image.resize(images, new_size, method='bilinear', antialias=True)
    images = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
  return tf.image.resize_with_crop_or_pad(images, crop_size, crop_size)
