"""Frozen-encoder video features: data-parallel extraction and an on-disk cache.

A video's feature is the online encoder's pooled backbone output averaged over its N
uniformly sampled, centre-cropped frames (REFERENCE.md; N = 30), or, for a 3D backbone, over
its N uniformly sampled clips of the pretraining run's clip length and stride. Batches become
global arrays sharded over the ``data`` mesh (every device of every host), the encoder runs per
device under shard_map, and the outputs of all hosts are gathered, so every host ends with
the whole split's features in video order. Padding examples (mask False) are dropped.

Features are cached as ``RUN/eval/features_<split>_step<N>.npz`` together with the settings
that produced them; a different checkpoint step is another file, and a file whose settings
differ from the requested ones is recomputed. The cache path may be any path etils.epath
opens (gs://... included).
"""

from __future__ import annotations

import io
import json
import time
from typing import Callable, Iterable

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec as P

from vclr_jax import global_batches
from vclr_jax import augment
from vclr_jax.models.resnet import accumulation_dtype
from vclr_jax.models.vclr import VCLR
from vclr_jax.train_step import DATA_AXIS

SETTINGS_KEY = 'settings_json'


def make_video_feature_fn(model: VCLR, mesh: Mesh):
  """jit(variables, (B, N, H, W, 3) uint8 frames or (B, N, L, H, W, 3) clips sharded over data)
  -> (B, F) features averaged over the N; the frames are normalised on the device."""

  def on_device(variables, frames):
    b, n = frames.shape[:2]
    frames = augment.normalize_uint8(frames, accumulation_dtype(model.dtype))
    feats = model.apply(variables, frames.reshape((b * n,) + frames.shape[2:]), train=False,
                        method='features')
    # The cache stores float32; the mean runs in the backbone's accumulation dtype.
    return feats.reshape(b, n, -1).mean(axis=1).astype(np.float32)

  return jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                               out_specs=P(DATA_AXIS)))


def middle_thumbnail(frames: np.ndarray, size: int) -> np.ndarray:
  """(B, N, H, W, 3) uint8 frames -> (B, size, size, 3) uint8 of each video's middle frame;
  of (B, N, L, H, W, 3) clips, the middle clip's middle frame."""
  middle = frames[:, frames.shape[1] // 2]
  if middle.ndim == 5:
    middle = middle[:, middle.shape[1] // 2]
  rows = np.arange(size) * middle.shape[1] // size
  cols = np.arange(size) * middle.shape[2] // size
  return middle[:, rows][:, :, cols]


def extract_features(model: VCLR, variables: dict, host_batches: Iterable[dict[str, np.ndarray]],
                     mesh: Mesh, *, num_batches: int | None = None, thumbnail_size: int = 0,
                     log: Callable[[str], None] = print) -> dict[str, np.ndarray]:
  """Features of every video the readers yield, over all hosts, sorted by video index.

  ``host_batches`` are this host's eval_reader batches ('frames', 'label', 'video_index',
  'mask'). Returns 'features' (V, F) float32, 'labels' (V,), 'video_index' (V,) and, with
  ``thumbnail_size``, 'thumbnails' (V, s, s, 3) uint8 middle frames for pictures.
  """
  local_devices = jax.local_device_count()
  feature_fn = make_video_feature_fn(model, mesh)
  variables = jax.device_put(variables, jax.sharding.NamedSharding(mesh, P()))

  def with_thumbnails(batches):
    for batch in batches:
      if batch['frames'].shape[0] % local_devices:
        raise ValueError(f'The per-host eval batch ({batch["frames"].shape[0]}) must be divisible '
                         f'by the {local_devices} local devices: change config.data.batch_size.')
      if thumbnail_size:
        batch = dict(batch, thumbnails=middle_thumbnail(batch['frames'], thumbnail_size))
      yield batch

  gathered = {name: [] for name in ('features', 'labels', 'video_index', 'mask', 'thumbnails')}
  start = time.time()
  for index, batch in enumerate(global_batches.prefetch_to_mesh(with_thumbnails(host_batches),
                                                                mesh)):
    gathered['features'].append(feature_fn(variables, batch.pop('frames')))
    for name, value in batch.items():
      gathered['labels' if name == 'label' else name].append(value)
    done = index + 1
    if done % 10 == 0 or done == num_batches:
      rate = done / (time.time() - start)
      eta = f'{(num_batches - done) / rate:.0f}s' if num_batches else '?'
      log(f'features: batch {done}/{num_batches or "?"} | {rate:.2f} batches/s | ETA {eta}')
  if not gathered['features']:
    raise ValueError('The reader yielded no batches: the split is empty.')
  # process_allgather gives every host all hosts' rows (a no-op copy on one host).
  result = {name: np.concatenate([np.asarray(multihost_utils.process_allgather(v, tiled=True))
                                  for v in values])
            for name, values in gathered.items() if values}
  keep = result.pop('mask').astype(bool)
  order = np.argsort(result['video_index'][keep], kind='stable')
  return {name: value[keep][order] for name, value in result.items()}


def cache_path(workdir, split: str, tag: str) -> epath.Path:
  """RUN/eval/features_<split>_<tag>.npz, the tag naming the encoder (see protocols.Encoder)."""
  return epath.Path(workdir) / 'eval' / f'features_{split}_{tag}.npz'


def load_or_extract(path, settings: dict, extract: Callable[[], dict[str, np.ndarray]],
                    log: Callable[[str], None] = print) -> dict[str, np.ndarray]:
  """The cached features at ``path`` if they were made with ``settings``; else extracts and saves."""
  path = epath.Path(path)
  settings_json = json.dumps(settings, sort_keys=True)
  if path.exists():
    with np.load(io.BytesIO(path.read_bytes())) as cached:
      if str(cached[SETTINGS_KEY]) == settings_json:
        log(f'Reusing cached features {path}.')
        return {name: cached[name] for name in cached.files if name != SETTINGS_KEY}
    log(f'Cached features {path} were made with other settings: recomputing.')
  result = extract()
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **result, **{SETTINGS_KEY: np.array(settings_json)})
    tmp_path = path.parent / (path.name + '.tmp')
    tmp_path.write_bytes(buffer.getvalue())
    tmp_path.replace(path)  # never a half-written cache after a crash
    log(f'Saved features of {len(result["features"])} videos to {path}.')
  return result
