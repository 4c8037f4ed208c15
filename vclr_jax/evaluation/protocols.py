"""The frozen-encoder protocols end to end: load the encoder, cached features, linear, retrieval.

Every protocol reads the pretraining run's config.json for the architecture, takes the
checkpoint given by config.checkpoint_step (or the untrained network with config.random_init),
and records its result in RUN/eval/results.json (see results.py). A run with a 3D backbone is
evaluated on clips of its pretraining clip length and stride: config.data.num_frames then
counts clips.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from vclr_jax import batch as batch_layout
from vclr_jax import checkpointing
from vclr_jax import train_state
from vclr_jax import train_step
from vclr_jax.evaluation import features as features_lib
from vclr_jax.evaluation import finetune
from vclr_jax.evaluation import linear
from vclr_jax.evaluation import pictures
from vclr_jax.evaluation import results
from vclr_jax.evaluation import retrieval
from vclr_jax.models.vclr import VCLR


@dataclasses.dataclass
class Encoder:
  model: VCLR
  variables: dict
  step: int | None  # None: random initialisation
  source: str
  tag: str  # names the encoder in cache and picture file names
  clip_length: int = 1  # the pretraining run's clips (1: single frames, a 2D ResNet)
  clip_stride: int = 1

  def clip_settings(self) -> dict[str, int]:
    return results.clip_settings(self.clip_length, self.clip_stride)

  def describe_inputs(self) -> str:
    if self.clip_length == 1:
      return 'frames'
    return f'clips of {self.clip_length} frames at stride {self.clip_stride}'


def load_encoder(config: ml_collections.ConfigDict, workdir: str) -> Encoder:
  """The online encoder of the run in ``workdir`` at config.checkpoint_step (-1: latest)."""
  run_config = checkpointing.load_run_config(workdir)
  model = train_state.build_model(run_config.model)
  clip_length, clip_stride = batch_layout.clip_shape(run_config.data)
  if config.random_init:
    size = run_config.data.image_size
    variables = model.init(jax.random.key(config.seed), jnp.zeros(
        (1,) + batch_layout.frames_shape(3, (size, size), clip_length)), train=False)
    return Encoder(model, dict(variables), None, f'random init (seed {config.seed})',
                   f'random_seed{config.seed}', clip_length, clip_stride)
  if config.finetuned_backbone:
    # The backbone of a TSN fine-tuning run (RUN/finetune/<name>): the supervised reference.
    directory = finetune.finetune_dir(workdir, config.finetuned_backbone)
    step = None if config.checkpoint_step < 0 else config.checkpoint_step
    finetuned, step = checkpointing.load_encoder_variables(directory, step)
    # A ViT's batch_stats are empty: it has no BatchNorm.
    variables = {name: {'backbone': tree['backbone']} if tree else {}
                 for name, tree in finetuned.items()}
    return Encoder(model, variables, step, f'{directory} step {step} (fine-tuned backbone)',
                   f'finetune-{config.finetuned_backbone}-step{step}', clip_length, clip_stride)
  checkpoints = checkpointing.absolute(workdir) / checkpointing.CHECKPOINT_DIR
  if not checkpoints.is_dir() or not checkpointing.step_dirs(checkpoints):
    raise FileNotFoundError(f'{checkpoints} holds no checkpoint: pretrain first (python -m '
                            'vclr_jax.main) or pass --config.random_init=True for the baseline.')
  step = None if config.checkpoint_step < 0 else config.checkpoint_step
  variables, step = checkpointing.load_encoder_variables(workdir, step)
  return Encoder(model, variables, step, str(checkpoints / str(step)), f'step{step}',
                 clip_length, clip_stride)


def split_features(config: ml_collections.ConfigDict, workdir: str, encoder: Encoder,
                   split: str, log=print) -> dict[str, np.ndarray]:
  """Cached (or freshly extracted) features of one split of config.data's videos."""
  from input_pipeline import eval_reader  # TensorFlow only where records are read
  from input_pipeline import records
  data = config.data
  source_dir = records.source_dir(data)
  if data.batch_size % jax.process_count():
    raise ValueError(f'config.data.batch_size={data.batch_size} must divide over '
                     f'{jax.process_count()} hosts.')
  per_host = data.batch_size // jax.process_count()
  settings = dict(records_dir=str(checkpointing.absolute(source_dir)), split=split,
                  num_frames=data.num_frames, crop_size=data.crop_size,
                  resize_short_side=data.resize_short_side, checkpoint=encoder.source,
                  step=encoder.step, thumbnail_size=config.features.thumbnail_size,
                  **encoder.clip_settings())

  def extract():
    log(f'Extracting features of {source_dir}/{split} with {encoder.source} '
        f'({data.num_frames} {encoder.describe_inputs()}, {data.crop_size} px centre crop).')
    batches = eval_reader.make_eval_iterator(
        source_dir, split, batch_size=per_host, num_frames=data.num_frames,
        crop_size=data.crop_size, resize_short_side=data.resize_short_side or None,
        clip_length=encoder.clip_length, clip_stride=encoder.clip_stride)
    num_batches = eval_reader.num_eval_batches(source_dir, split, batch_size=per_host)
    return features_lib.extract_features(
        encoder.model, encoder.variables, batches, train_step.make_mesh(),
        num_batches=num_batches, thumbnail_size=config.features.thumbnail_size, log=log)

  return features_lib.load_or_extract(features_lib.cache_path(workdir, split, encoder.tag),
                                      settings, extract, log)


def _record(config, workdir, encoder, protocol, split, metrics, settings, log):
  table = results.record(workdir, dict(
      protocol=protocol, dataset=config.dataset, split=split, checkpoint_step=encoder.step,
      checkpoint=encoder.source, metrics=metrics, settings=settings))
  log(f'{protocol} on {config.dataset}/{split}: ' +
      ', '.join(f'{name} {100 * value:.2f}' for name, value in metrics.items()))
  log('\n' + table)
  return metrics


def run_features(config, workdir, log=print) -> None:
  encoder = load_encoder(config, workdir)
  for split in (config.data.train_split, config.data.test_split):
    split_features(config, workdir, encoder, split, log)


def run_linear(config, workdir, log=print) -> dict[str, float]:
  """Linear probe: train on config.data.train_split's features, report on test_split's."""
  encoder = load_encoder(config, workdir)
  train = split_features(config, workdir, encoder, config.data.train_split, log)
  test = split_features(config, workdir, encoder, config.data.test_split, log)
  if config.linear.solver == 'svm':
    metrics = linear.svm_probe(train['features'], train['labels'], test['features'],
                               test['labels'], C=config.linear.C)
    settings = dict(solver='svm (LinearSVC dual=False, no bias)', C=config.linear.C)
  elif config.linear.solver == 'jax':
    probe_config = ml_collections.ConfigDict(dict(config.linear.jax.to_dict(), C=config.linear.C))
    metrics = linear.jax_probe(train['features'], train['labels'], test['features'],
                               test['labels'], probe_config, log=log)
    settings = dict(solver='jax', C=config.linear.C, **config.linear.jax.to_dict())
  else:
    raise ValueError(f"config.linear.solver must be 'svm' or 'jax', got {config.linear.solver!r}.")
  settings.update(num_frames=config.data.num_frames, crop_size=config.data.crop_size,
                  train_split=config.data.train_split, **encoder.clip_settings())
  return _record(config, workdir, encoder, 'linear', config.data.test_split, metrics, settings,
                 log)


def run_retrieval(config, workdir, log=print) -> dict[str, float]:
  """R@k of test-split queries against the train-split gallery, plus the picture."""
  encoder = load_encoder(config, workdir)
  gallery = split_features(config, workdir, encoder, config.data.train_split, log)
  queries = split_features(config, workdir, encoder, config.data.test_split, log)
  ks = tuple(config.retrieval.ks)
  metrics = retrieval.recall_at_k(queries['features'], queries['labels'], gallery['features'],
                                  gallery['labels'], ks)
  settings = dict(ks=list(ks), gallery_split=config.data.train_split,
                  num_frames=config.data.num_frames, crop_size=config.data.crop_size,
                  similarity='cosine', ties='lower gallery index first',
                  **encoder.clip_settings())
  if config.retrieval.picture_queries and 'thumbnails' in queries and jax.process_index() == 0:
    settings['picture'] = _retrieval_picture(config, workdir, encoder, queries, gallery)
    log(f'Retrieval picture: {settings["picture"]}')
  return _record(config, workdir, encoder, 'retrieval', config.data.test_split, metrics,
                 settings, log)


def _retrieval_picture(config, workdir, encoder, queries, gallery) -> str:
  from input_pipeline import records  # the index is plain JSON; no TensorFlow
  chosen = np.unique(np.linspace(0, len(queries['features']) - 1,
                                 config.retrieval.picture_queries).round().astype(int))
  neighbours = retrieval.nearest_neighbours(queries['features'][chosen], gallery['features'],
                                            config.retrieval.picture_neighbours)
  class_names = records.read_index(records.source_dir(config.data),
                                   config.data.train_split).get('class_names') or None
  path = str(epath.Path(workdir) / 'eval' /
             f'retrieval_{config.data.test_split}_{encoder.tag}.png')
  return pictures.retrieval_picture(path, queries['thumbnails'][chosen], queries['labels'][chosen],
                                    gallery['thumbnails'][neighbours],
                                    gallery['labels'][neighbours], class_names)
