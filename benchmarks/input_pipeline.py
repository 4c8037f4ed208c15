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
- placement of in-memory uint8 batches as global arrays: vclr_jax.global_batches.to_global
  against jax.make_array_from_process_local_data (and, in one process, jax.device_put with the
  batch's sharding), the paths interleaved round by round.
Its last line is ``host videos/s per core: X (floor Y, ratio Z)``.

``--placement_only`` times the last item alone, on random batches of ``--frame_size``, and
needs no TensorFlow: on an accelerator machine it is the host-to-device placement speed that
the reader has to feed. ``--batch_size`` is then the global batch. With ``--processes=N`` it
starts N processes of ``--devices_per_process`` forced CPU devices on loopback, one JAX job,
each placing its slice; a path's rate is the global batch over the slowest process's time:

  python benchmarks/input_pipeline.py --placement_only --processes=2 --devices_per_process=4 \
      --batch_size=128 --rounds=15
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


def placement_paths(batch, mesh) -> dict:
  """Name -> a function placing this host's ``batch`` as global arrays over ``mesh``."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from vclr_jax.global_batches import to_global
  sharding = NamedSharding(mesh, P('data'))
  paths = {
      'to_global: device_put per device + make_array_from_single_device_arrays':
          lambda: to_global(batch, mesh),
      'make_array_from_process_local_data (multi-host path before)':
          lambda: {name: jax.make_array_from_process_local_data(sharding, value)
                   for name, value in batch.items()},
  }
  if jax.process_count() == 1:
    paths['device_put(batch, sharding) (one-process path before)'] = (
        lambda: jax.device_put(batch, sharding))
  return paths


def time_placement(batch, rounds: int, repeats: int = 4) -> dict[str, dict[str, list[float]]]:
  """Wall and process CPU seconds per placement of this host's ``batch`` by each path,
  ``rounds`` times, the paths interleaved; each round queues ``repeats`` placements (as
  prefetch_to_mesh does) and waits. The CPU seconds (every thread of the process) hold on a
  busy machine, where the wall time moves with the other load."""
  import jax
  from vclr_jax.train_step import make_mesh
  paths = placement_paths(batch, make_mesh())
  for place in paths.values():
    jax.block_until_ready(place())
  seconds = {clock: {name: [] for name in paths} for clock in ('wall', 'cpu')}
  for _ in range(rounds):
    for name, place in paths.items():
      wall, cpu = time.perf_counter(), time.process_time()
      placed = [place() for _ in range(repeats)]
      jax.block_until_ready(placed)
      seconds['cpu'][name].append((time.process_time() - cpu) / repeats)
      seconds['wall'][name].append((time.perf_counter() - wall) / repeats)
      del placed
  return seconds


def report_placement(seconds_per_process: list[dict], global_batch: int, video_bytes: int,
                     devices: int) -> None:
  """Per path, the global videos/s (per round the slowest process's wall time, then the
  median) and the videos per CPU second (per round all processes' CPU time, then the median);
  for the other paths, to_global's figures over theirs."""
  processes = len(seconds_per_process)
  print(f'placement of a global batch of {global_batch} videos ({video_bytes / 1e6:.2f} MB of '
        f'uint8 frames each) over {processes} process(es) x {devices // processes} device(s), '
        'median of the rounds, paths interleaved:')
  wall = {name: np.max([s['wall'][name] for s in seconds_per_process], axis=0)
          for name in seconds_per_process[0]['wall']}
  cpu = {name: np.sum([s['cpu'][name] for s in seconds_per_process], axis=0) for name in wall}
  figures = {name: [global_batch / float(np.median(clock[name])) for clock in (wall, cpu)]
             for name in wall}
  first = next(iter(figures))
  for name, (rate, per_cpu) in figures.items():
    line = (f'  {name}: {rate:.0f} videos/s ({rate * video_bytes / 1e9:.2f} GB/s), '
            f'{per_cpu:.0f} videos per CPU second')
    if name != first:
      line += (f'; to_global: {figures[first][0] / rate:.2f}x the videos/s, '
               f'{figures[first][1] / per_cpu:.2f}x the videos per CPU second')
    print(line)


def placement_worker(spec: str, global_batch: int, height: int, width: int, rounds: int) -> None:
  """One process of a --processes run: joins the job, times its own slice, prints JSON."""
  import json
  import jax
  from vclr_jax import batch as batch_layout
  port, process_id, processes = (int(v) for v in spec.split(':'))
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=processes,
                             process_id=process_id)
  batch = batch_layout.random_batch(global_batch // processes, (height, width), seed=process_id)
  print('PLACEMENT ' + json.dumps(time_placement(batch, rounds)), flush=True)


def run_placement_processes(args, height: int, width: int) -> None:
  """--processes workers of --devices_per_process forced CPU devices each, on loopback."""
  import json
  import socket
  import subprocess
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={args.devices_per_process}')
  workers = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), '--placement_only',
       f'--placement_worker={port}:{i}:{args.processes}', f'--batch_size={args.batch_size}',
       f'--frame_size={args.frame_size}', f'--rounds={args.rounds}'], env=env, stdout=subprocess.PIPE, text=True)
      for i in range(args.processes)]
  outputs = [worker.communicate()[0] for worker in workers]
  if any(worker.returncode for worker in workers):
    sys.exit(f'a placement worker failed: {[worker.returncode for worker in workers]}')
  seconds = [json.loads(line.split(' ', 1)[1]) for output in outputs
             for line in output.splitlines() if line.startswith('PLACEMENT ')]
  report_placement(seconds, args.batch_size, 6 * height * width * 3,
                   args.processes * args.devices_per_process)


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
  parser.add_argument('--processes', type=int, default=1,
                      help='--placement_only: this many processes on loopback, one JAX job')
  parser.add_argument('--devices_per_process', type=int, default=4,
                      help='--placement_only with --processes > 1: forced CPU devices each')
  parser.add_argument('--rounds', type=int, default=9,
                      help='placement: timed rounds per path, interleaved (the median is printed)')
  parser.add_argument('--placement_worker', default='', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.frame_size.split('x'))
  if args.placement_worker:
    placement_worker(args.placement_worker, args.batch_size, height, width, args.rounds)
    return
  if args.placement_only and args.processes > 1:
    run_placement_processes(args, height, width)
    return
  if args.placement_only:
    import jax
    from vclr_jax import batch as batch_layout
    batch = batch_layout.random_batch(args.batch_size, (height, width), seed=0)
    report_placement([time_placement(batch, args.rounds)], args.batch_size,
                     batch['frames'][0].nbytes, jax.device_count())
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
  import jax
  report_placement([time_placement(batch, args.rounds)], args.batch_size,
                   batch['frames'][0].nbytes, jax.device_count())
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
