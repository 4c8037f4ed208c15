"""Decoding one source video (PyAV) or frame folder into resampled, resized JPEG frames.

Paths go through tf.io.gfile, so sources may lie on any filesystem TensorFlow accepts.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Iterable, Iterator

import av
import numpy as np
import tensorflow as tf
from PIL import Image


class VideoError(Exception):
  """This input cannot be used; the message is the reason written to the skipped report."""


@dataclasses.dataclass(frozen=True)
class FrameGeometry:
  """How frames are resized: to a fixed size, to a short side, or not at all (both None)."""
  fixed_size: tuple[int, int] | None = None  # (width, height), e.g. the reference's 340x256.
  short_side: int | None = None

  def output_size(self, width: int, height: int) -> tuple[int, int]:
    if self.fixed_size:
      return self.fixed_size
    if self.short_side:
      scale = self.short_side / min(width, height)
      return max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  jpeg_frames: list[bytes]
  fps: float
  width: int
  height: int


def resample(timed_items: Iterable[tuple[float, Any]], fps: float | None,
             frame_duration: float) -> Iterator[Any]:
  """Yields the item shown at every output time k / fps (the latest item not after it).

  ``timed_items`` are (presentation time in seconds, item) in display order; the video lasts
  until the last time + ``frame_duration``. Like ffmpeg's fps filter this drops items when
  lowering the rate and repeats them when raising it. ``fps=None`` keeps every item.
  """
  if not fps:
    for _, item in timed_items:
      yield item
    return
  step = 1.0 / fps
  # Half a tick of tolerance so that rounding in the container's timestamps never drops a frame.
  tolerance = 0.5 * min(step, frame_duration)
  start, current, current_time, next_output = None, None, 0.0, 0
  for time, item in timed_items:
    if start is None:
      start = time
    time -= start
    while current is not None and next_output * step < time - tolerance:
      yield current
      next_output += 1
    current, current_time = item, time
  if current is None:
    return
  while next_output * step < current_time + frame_duration - tolerance:
    yield current
    next_output += 1


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(rgb).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def decode_video_file(path: str, *, fps: float | None, geometry: FrameGeometry,
                      jpeg_quality: int) -> DecodedVideo:
  """Decodes a video file with PyAV; raises VideoError with the reason when it is unusable."""
  if not tf.io.gfile.exists(path):
    raise VideoError('file not found')
  if tf.io.gfile.stat(path).length == 0:
    raise VideoError('zero-length file')
  try:
    # Local files by name (FFmpeg reads them itself); others through a gfile file object.
    with av.open(path if '://' not in path else tf.io.gfile.GFile(path, 'rb')) as container:
      if not container.streams.video:
        raise VideoError('no video stream')
      stream = container.streams.video[0]
      stream.thread_type = 'AUTO'
      rate = float(stream.average_rate or stream.guessed_rate or 30)
      width, height = geometry.output_size(stream.codec_context.width,
                                           stream.codec_context.height)

      def timed_frames():
        for index, frame in enumerate(container.decode(stream)):
          yield (frame.time if frame.time is not None else index / rate), frame

      jpegs, last_frame, last_jpeg = [], None, None
      for frame in resample(timed_frames(), fps, 1.0 / rate):
        if frame is not last_frame:  # Raising the rate repeats a frame: encode it once.
          rgb = frame.reformat(width=width, height=height, format='rgb24',
                               interpolation='BICUBIC').to_ndarray()
          last_frame, last_jpeg = frame, encode_jpeg(rgb, jpeg_quality)
        jpegs.append(last_jpeg)
  except VideoError:
    raise
  except (av.FFmpegError, OSError, ValueError, RuntimeError, tf.errors.OpError) as error:
    raise VideoError(f'cannot decode: {type(error).__name__}: {error}') from error
  return DecodedVideo(jpegs, fps or rate, width, height)


def decode_frame_folder(path: str, *, fps: float | None, source_fps: float,
                        geometry: FrameGeometry, jpeg_quality: int) -> DecodedVideo:
  """Reads a folder of JPEG frames (sorted by name); JPEGs are copied as they are unless a
  resize is asked for."""
  if not tf.io.gfile.isdir(path):
    raise VideoError('frame folder not found')
  names = sorted(name for name in tf.io.gfile.listdir(path)
                 if name.lower().endswith(('.jpg', '.jpeg')))
  if not names:
    raise VideoError('no JPEG frames in folder')
  chosen = list(resample(((i / source_fps, name) for i, name in enumerate(names)), fps,
                         1.0 / source_fps))
  try:
    with tf.io.gfile.GFile(os.path.join(path, names[0]), 'rb') as f, Image.open(f) as first:
      source_size = first.size
    size = geometry.output_size(*source_size)
    jpegs = []
    for name in chosen:
      with tf.io.gfile.GFile(os.path.join(path, name), 'rb') as f:
        data = f.read()
      if size != source_size:
        with Image.open(io.BytesIO(data)) as image:
          resized = image.convert('RGB').resize(size, Image.Resampling.BICUBIC)
        data = encode_jpeg(np.asarray(resized), jpeg_quality)
      jpegs.append(data)
  except (OSError, tf.errors.OpError) as error:
    raise VideoError(f'cannot read frame: {error}') from error
  return DecodedVideo(jpegs, fps or source_fps, size[0], size[1])
