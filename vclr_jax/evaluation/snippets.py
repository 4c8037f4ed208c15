"""Snippet features for temporal action localization (BMN, as in the paper's Table 5).

  python -m vclr_jax.evaluate --config=configs/snippet_features.py --workdir=RUN \
      --eval=snippet_features --config.data.records_dir=/data/activitynet_records

For every video of each split in config.snippets.splits: the pooled backbone feature (2048-d
for ResNet-50) of the centre frame of every ``config.snippets.stride``-frame snippet, centre
crop as the other protocols; with ``config.snippets.num_positions`` > 0 the sequence is
rescaled by linear interpolation to that many temporal positions (BMN's ActivityNet features
have 100). The encoder is the run's (config.checkpoint_step), a fine-tuned backbone
(config.finetuned_backbone) or the random baseline (config.random_init), as in protocols.py.

Written in the layout mmaction2's BMN reads (LoadLocalizationFeature: ``np.loadtxt(
<data_prefix>/<video_name>.csv, delimiter=',', skiprows=1)``, transposed to (C, T)):
``RUN/eval/snippets_<encoder tag>/<split>/<video_id>.csv``, a header row ``f0,...,f{C-1}`` and
one row per temporal position, and beside them ``video_info.json`` with each video's frame
count, fps, label, snippets and the settings (``video_info.process<i>.json`` per host on a
multi-host job: hosts work on their own shards without collectives).
"""

from __future__ import annotations

import io
import json

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vclr_jax import checkpointing
from vclr_jax.evaluation import features as features_lib
from vclr_jax.evaluation import protocols
from vclr_jax.train_step import DATA_AXIS


def rescale(sequence: np.ndarray, num_positions: int) -> np.ndarray:
  """(T, C) -> (num_positions, C): linear interpolation at num_positions evenly spaced points
  from the first to the last snippet (a single snippet is repeated)."""
  length = len(sequence)
  positions = np.linspace(0.0, length - 1, num_positions)
  lower = np.floor(positions).astype(int)
  upper = np.minimum(lower + 1, length - 1)
  weight = (positions - lower)[:, None]
  return ((1 - weight) * sequence[lower] + weight * sequence[upper]).astype(sequence.dtype)


def write_feature_csv(path: str, sequence: np.ndarray) -> None:
  """mmaction2's localization feature file: header row, then one row of C values per position."""
  header = ','.join(f'f{i}' for i in range(sequence.shape[1]))
  text = io.StringIO()
  np.savetxt(text, sequence, fmt='%.7g', delimiter=',', header=header, comments='')
  tmp_path = epath.Path(path + '.tmp')
  tmp_path.write_text(text.getvalue())
  tmp_path.replace(path)


def make_frame_feature_fn(model, variables: dict, chunk: int):
  """(T, H, W, 3) uint8 frames -> (T, C) float32 pooled features, ``chunk`` frames per call over
  this host's devices (the last chunk padded, so one compiled shape serves every video)."""
  devices = jax.local_devices()
  if chunk % len(devices):
    raise ValueError(f'config.snippets.batch_size={chunk} must be divisible by the '
                     f'{len(devices)} local devices.')
  mesh = Mesh(np.array(devices), (DATA_AXIS,))
  # Each frame as a one-frame video: the video feature function's mean over one frame.
  video_features = features_lib.make_video_feature_fn(model, mesh)
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  sharding = NamedSharding(mesh, P(DATA_AXIS))

  def frame_features(frames: np.ndarray) -> np.ndarray:
    outputs = []
    for start in range(0, len(frames), chunk):
      part = frames[start:start + chunk]
      padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], part.dtype)])
      out = video_features(variables, jax.device_put(padded[:, None], sharding))
      outputs.append(np.asarray(out)[:len(part)])
    return np.concatenate(outputs)

  return frame_features


def run_snippet_features(config: ml_collections.ConfigDict, workdir: str, log=print) -> str:
  """Writes every split's per-video feature files; returns the output folder."""
  from input_pipeline import records
  from input_pipeline import snippet_reader  # TensorFlow only where records are read
  checkpointing.require_frame_backbone(checkpointing.load_run_config(workdir), workdir,
                                       'snippet features (one feature per frame)')
  encoder = protocols.load_encoder(config, workdir)
  data, snippets = config.data, config.snippets
  source_dir = records.source_dir(data)
  if snippets.num_positions < 0:
    raise ValueError('config.snippets.num_positions must be 0 (keep every snippet) or a '
                     f'positive number of temporal positions, got {snippets.num_positions}.')
  frame_features = make_frame_feature_fn(encoder.model, encoder.variables, snippets.batch_size)
  out_root = epath.Path(workdir) / 'eval' / f'snippets_{encoder.tag}'
  settings = dict(checkpoint=encoder.source, step=encoder.step, stride=snippets.stride,
                  num_positions=snippets.num_positions, crop_size=data.crop_size,
                  resize_short_side=data.resize_short_side, frame='centre of each snippet')
  for split in snippets.splits.split(','):
    out_dir = out_root / split
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = {}
    for video in snippet_reader.make_snippet_iterator(
        source_dir, split, stride=snippets.stride, crop_size=data.crop_size,
        resize_short_side=data.resize_short_side or None):
      if video['video_id'] in videos:
        raise ValueError(f'Two videos of {source_dir}/{split} are named '
                         f'{video["video_id"]!r}: feature files are named by the source file '
                         'name, which must be unique within a split.')
      sequence = frame_features(video['frames'])
      if snippets.num_positions:
        sequence = rescale(sequence, snippets.num_positions)
      write_feature_csv(str(out_dir / f'{video["video_id"]}.csv'), sequence)
      videos[video['video_id']] = dict(
          video_index=int(video['video_index']), label=int(video['label']),
          duration_frame=video['num_frames'], fps=video['fps'],
          duration_second=video['num_frames'] / video['fps'],
          num_snippets=len(video['frame_indices']),
          feature_frame=len(video['frame_indices']) * snippets.stride)
      if len(videos) % 100 == 0:
        log(f'snippet features: {len(videos)} videos of {split} written to {out_dir}')
    info_name = ('video_info.json' if jax.process_count() == 1
                 else f'video_info.process{jax.process_index()}.json')
    (out_dir / info_name).write_text(json.dumps(dict(settings=settings, videos=videos), indent=1))
    log(f'Snippet features of {len(videos)} videos of {source_dir}/{split} '
        f'({encoder.source}, stride {snippets.stride}, '
        f'{snippets.num_positions or "all"} positions): {out_dir}')
  return out_root
