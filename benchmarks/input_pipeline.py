r"""Host input path against the decode floor and a PIL/torchvision loader, on the same records.

  python benchmarks/input_pipeline.py --cores=1            # K400 layout: 300 frames, 340x256
  python benchmarks/input_pipeline.py --cores=1 --records=/data/k400_records

Without --records it writes reference-style JPEG frame folders (natural-looking frames,
quality 85, ``--num_frames`` frames of ``--frame_size``) and prepares them with
``--source=frames``, as K400 frames extracted by the authors' script would be.

With the process pinned to ``--cores`` cores and TensorFlow's thread pools limited to them,
it measures in one run:
- the training reader (read the six sampled JPEGs through the frame index, decode onto the
  canvas, batch): host videos/s per core, bytes read and bytes shipped per example;
- the decode floor: the same number of examples' six JPEGs, already in memory, only decoded
  (any CPU path pays at least this);
- a PIL + torchvision loader doing the MoCo v2 work of the authors' code per video (six frame
  files decoded, seven crops with RandomResizedCrop, ColorJitter, RandomGrayscale, blur,
  flip, ToTensor, Normalize), one process, when the frame folders are at hand;
- placement of in-memory uint8 batches as global arrays (vclr_jax.global_batches.to_global).
Its last line is ``host videos/s per core: X (floor Y, ratio Z)``.

``--placement_only`` times the last item alone, on random batches of ``--frame_size``, and
needs no TensorFlow: on an accelerator machine it is the host-to-device placement speed that
the reader has to feed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def pin_cores(cores: int) -> int:
  available = sorted(os.sched_getaffinity(0))
  chosen = available[:cores]
  os.sched_setaffinity(0, chosen)
  return len(chosen)


def natural_frames(num_frames: int, height: int, width: int, seed: int) -> list[np.ndarray]:
  """A slowly panning photo-like scene: smooth shading, hard-edged shapes, noise."""
  rng = np.random.default_rng(seed)
  big_h, big_w = height + num_frames, width + 2 * num_frames
  yy, xx = np.mgrid[0:big_h, 0:big_w] / max(big_h, big_w)
  scene = np.stack([0.5 + 0.4 * np.sin(9 * xx * rng.uniform(0.5, 2) + c) *
                    np.cos(7 * yy * rng.uniform(0.5, 2) + c) for c in range(3)], -1)
  for _ in range(25):
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.02, 0.1)
    scene[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, 3)
  scene = np.clip(scene * 255 + rng.normal(0, 6, scene.shape), 0, 255).astype(np.uint8)
  return [scene[t:t + height, 2 * t:2 * t + width] for t in range(num_frames)]


def write_frame_folders(root: str, videos: int, num_frames: int, height: int, width: int):
  from PIL import Image
  lines = []
  for video in range(videos):
    folder = os.path.join(root, 'train', 'synthetic', f'video_{video:04d}')
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(natural_frames(num_frames, height, width, video)):
      Image.fromarray(frame).save(os.path.join(folder, f'frame_{i + 1:05d}.jpg'), quality=85)
    lines.append(f'synthetic/video_{video:04d} {num_frames} 0\n')
  with open(os.path.join(root, 'train.txt'), 'w') as f:
    f.writelines(lines)


def configure_tensorflow(cores: int):
  import tensorflow as tf
  tf.config.threading.set_inter_op_parallelism_threads(cores)
  tf.config.threading.set_intra_op_parallelism_threads(cores)
  return tf


def time_reader(records_dir, frame_size, batch_size, batches, warmup, cores):
  from input_pipeline import record_stream
  from input_pipeline import train_reader
  stats = []
  iterator = train_reader.make_train_iterator(
      records_dir, 'train', batch_size=batch_size, frame_size=frame_size, seed=0,
      process_index=0, process_count=1, reader_stats=stats,
      options=record_stream.ReaderOptions(num_parallel_calls=cores, prefetch=2))
  for _ in range(warmup):
    batch = next(iterator)
  reader = stats[0]
  read_before, examples_before = reader.bytes_read, reader.examples_read
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  elapsed = time.perf_counter() - start
  read_per_example = ((reader.bytes_read - read_before) /
                      max(1, reader.examples_read - examples_before))
  shipped = sum(value.nbytes for value in batch.values()) / batch_size
  return batches * batch_size / elapsed, read_per_example, shipped, reader.frames, batch


def time_decode_floor(tf, frames_index, batches, warmup, batch_size, cores):
  """Six JPEGs per example, already in memory, decoded: nothing else (the same frame files)."""
  rng = np.random.default_rng(0)
  jpegs = []
  for _ in range(4 * batch_size):
    video = int(rng.integers(len(frames_index.frames_per_video)))
    picks = rng.choice(frames_index.frames_per_video[video], 6, replace=False)
    jpegs.append(frames_index.read(video, np.sort(picks))[0])
  iterator = iter(tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
                  .map(lambda six: tf.stack([tf.io.decode_jpeg(six[i], channels=3)
                                             for i in range(6)]), num_parallel_calls=cores)
                  .batch(batch_size, drop_remainder=True).prefetch(2))
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def time_pil_loader(frames_root, videos, num_frames, examples, image_size):
  """The authors' per-video work in PIL + torchvision: 6 frame files, 7 MoCo v2 crops."""
  import torch
  from PIL import Image, ImageFilter
  from vclr_jax.augment import IMAGENET_MEAN, IMAGENET_STD
  from vclr_jax.interop.torchvision_compat import import_torchvision
  transforms = import_torchvision().transforms
  torch.set_num_threads(1)

  class Blur:
    def __call__(self, image):
      return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))

  augment = transforms.Compose([
      transforms.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
      transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
      transforms.RandomGrayscale(p=0.2),
      transforms.RandomApply([Blur()], p=0.5),
      transforms.RandomHorizontalFlip(),
      transforms.ToTensor(),
      transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
  start = time.perf_counter()
  for example in range(examples):
    folder = os.path.join(frames_root, 'train', 'synthetic', f'video_{example % videos:04d}')
    picks = sorted(random.sample(range(num_frames), 6))
    images = []
    for i in picks:
      with Image.open(os.path.join(folder, f'frame_{i + 1:05d}.jpg')) as image:
        images.append(image.convert('RGB'))
    crops = [augment(image) for image in images] + [augment(images[0])]
    torch.stack(crops)
  return examples / (time.perf_counter() - start)


def time_placement(batch, repeats=20):
  """Host uint8 batches placed as global arrays over this process's devices, alone."""
  import jax
  from vclr_jax.global_batches import to_global
  from vclr_jax.train_step import make_mesh
  mesh = make_mesh()
  jax.block_until_ready(to_global(batch, mesh))
  start = time.perf_counter()
  for _ in range(repeats):
    placed = to_global(batch, mesh)
  jax.block_until_ready(placed)
  return repeats * len(batch['anchor']) / (time.perf_counter() - start), mesh.size


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--records', default='', help='existing records (else generated)')
  parser.add_argument('--work_dir', default='', help='where to generate (default: temp dir)')
  parser.add_argument('--cores', type=int, default=1)
  parser.add_argument('--frame_size', default='340x256', help='WIDTHxHEIGHT of generated frames')
  parser.add_argument('--num_frames', type=int, default=300, help='frames per generated video')
  parser.add_argument('--videos', type=int, default=32, help='generated videos')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--batches', type=int, default=10, help='timed batches after warm-up')
  parser.add_argument('--warmup_batches', type=int, default=2)
  parser.add_argument('--image_size', type=int, default=224, help='crop size (PIL loader)')
  parser.add_argument('--placement_only', action='store_true',
                      help='time only the placement of random in-memory batches (no TensorFlow)')
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.frame_size.split('x'))
  if args.placement_only:
    from vclr_jax import batch as batch_layout
    batch = batch_layout.random_batch(args.batch_size, (height, width), seed=0)
    placed, devices = time_placement(batch)
    print(f'placement of {args.batch_size} x {batch["frames"][0].nbytes / 1e6:.2f} MB '
          f'{width}x{height} examples -> global arrays over {devices} device(s): '
          f'{placed:.0f} videos/s ({placed * batch["frames"][0].nbytes / 1e9:.2f} GB/s)')
    return
  cores = pin_cores(args.cores)
  tf = configure_tensorflow(cores)
  from input_pipeline import prepare
  from input_pipeline import records

  work_dir = args.work_dir or tempfile.mkdtemp(prefix='vclr_input_bench_')
  frames_root = None
  records_dir = args.records
  if not records_dir:
    frames_root = os.path.join(work_dir, 'frames')
    records_dir = os.path.join(work_dir, 'records')
    if not os.path.exists(os.path.join(records_dir, 'train', records.INDEX_FILENAME)):
      start = time.perf_counter()
      write_frame_folders(frames_root, args.videos, args.num_frames, height, width)
      prepare.main(['--source=frames', f'--root={frames_root}', '--splits=train',
                    f'--out={records_dir}', '--num_shards=4', f'--workers={cores}'])
      print(f'generated {args.videos} videos x {args.num_frames} frames of {width}x{height} and '
            f'prepared them in {time.perf_counter() - start:.0f} s')
  index = records.read_index(records_dir, 'train')
  first = tf.io.decode_jpeg(next(iter(tf.data.TFRecordDataset(index['shards'][0]['path'])
                                      .map(lambda r: records.parse_video(r)['frames'][0]))))
  frame_size = tuple(int(v) for v in first.shape[:2])
  record_bytes = sum(tf.io.gfile.stat(s['path']).length for s in index['shards']) / index[
      'num_videos']

  videos_per_s, read, shipped, frames_index, batch = time_reader(
      records_dir, frame_size, args.batch_size, args.batches, args.warmup_batches, cores)
  floor = time_decode_floor(tf, frames_index, args.batches, args.warmup_batches,
                            args.batch_size, cores)
  print(f'records: {index["num_videos"]} videos, {index["num_frames"] / index["num_videos"]:.0f} '
        f'frames each on average, {frame_size[1]}x{frame_size[0]}, {cores} core(s), '
        f'batch {args.batch_size}')
  print(f'bytes read per example: {read / 1e6:.3f} MB (the whole record: {record_bytes / 1e6:.2f}'
        f' MB, {record_bytes / read:.1f}x more)')
  print(f'bytes shipped per example: {shipped / 1e6:.3f} MB (uint8 frames; float32 crops of '
        f'7 x {args.image_size} px would be {7 * args.image_size ** 2 * 12 / 1e6:.2f} MB)')
  placed, devices = time_placement(batch)
  print(f'placement alone (in-memory batches -> global arrays over {devices} device(s)): '
        f'{placed:.0f} videos/s')
  if frames_root:
    pil = time_pil_loader(frames_root, args.videos, args.num_frames,
                          max(16, args.batch_size), args.image_size)
    print(f'PIL + torchvision loader (authors\' per-video work, 1 process): {pil:.1f} videos/s; '
          f'ours {videos_per_s / cores / pil:.1f}x per core')
  print(f'host videos/s per core: {videos_per_s / cores:.1f} (floor {floor / cores:.1f}, '
        f'ratio {videos_per_s / floor:.2f})')
  if not args.work_dir and not args.records:
    shutil.rmtree(work_dir)


if __name__ == '__main__':
  main()
