"""Tiny datasets of JPEG frame folders (the reference's layout), prepared in milliseconds.

Preparation copies such JPEGs verbatim (source 'frames'), so tests get real records without
encoding or decoding videos, and independent of the synthetic generator.
"""

import io
import os

import numpy as np
from PIL import Image

FRAME_HEIGHT, FRAME_WIDTH = 40, 56


def frame_jpeg(video: int, frame: int) -> bytes:
  """A small textured frame, different for every (video, frame)."""
  rng = np.random.default_rng(1000 * video + frame)
  yy, xx = np.mgrid[0:FRAME_HEIGHT, 0:FRAME_WIDTH]
  base = np.stack([xx * 4 + 10 * frame, yy * 5 + 30 * video, (xx + yy) * 2], -1)
  pixels = (base + rng.integers(0, 60, base.shape)) % 256
  buffer = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def write_frame_folders(root: str, frames_per_video: list[int], split: str = 'train',
                        num_classes: int = 3) -> list[list[bytes]]:
  """Writes ``root/<split>/class<c>/video<v>/frame_00001.jpg ...`` and ``root/<split>.txt``
  (video v in class v % num_classes); returns every video's JPEG bytes."""
  videos, lines = [], []
  for video, count in enumerate(frames_per_video):
    label = video % num_classes
    relative = f'class{label}/video{video:03d}'
    folder = os.path.join(root, split, relative)
    os.makedirs(folder)
    jpegs = [frame_jpeg(video, i) for i in range(count)]
    for i, jpeg in enumerate(jpegs):
      with open(os.path.join(folder, f'frame_{i + 1:05d}.jpg'), 'wb') as f:
        f.write(jpeg)
    videos.append(jpegs)
    lines.append(f'{relative} {count} {label}\n')
  with open(os.path.join(root, f'{split}.txt'), 'w') as f:
    f.writelines(lines)
  return videos


def prepare_argv(root: str, out: str, *, split: str = 'train', videos_per_shard: int = 3
                 ) -> list[str]:
  """The `python -m input_pipeline.prepare` arguments for a write_frame_folders dataset."""
  return ['--source=frames', f'--root={root}', f'--splits={split}', f'--out={out}',
          f'--videos_per_shard={videos_per_shard}', '--workers=1']
