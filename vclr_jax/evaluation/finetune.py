"""TSN fine-tuning (REFERENCE.md, mmaction2's TSN): training, testing, checkpoints, resuming.

The network is the pretraining run's backbone (initialised from its online encoder, or
randomly), dropout and a linear classifier applied to each of k segment frames, with the
segments' logits averaged (average consensus). Training: one random frame per segment,
random resized crop and flip cut on the device (vclr_jax/augment.py), SGD with momentum and weight
decay, the learning rate multiplied by decay_factor at each of decay_epochs. Testing: N
uniform centre-cropped frames per video, each frame a segment, the predictions averaged.
A run with a 3D backbone fine-tunes on clips of its pretraining clip length and stride: every
"frame" above is then a clip (one crop and flip per clip), and test_frames counts clips.

The run lives in RUN/finetune/<config.name>/ (checkpoints/ by Orbax, config.json); rerunning
the same command resumes from the latest checkpoint and continues the same data stream.
"""

from __future__ import annotations

import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from vclr_jax import augment
from vclr_jax import batch as batch_layout
from vclr_jax import checkpointing
from vclr_jax import global_batches
from vclr_jax import train
from vclr_jax import train_step
from vclr_jax import training_loop
from vclr_jax.evaluation import linear
from vclr_jax.evaluation import results
from vclr_jax.models.vclr import make_backbone, vit_spec

DATA_AXIS = train_step.DATA_AXIS


class TSN(nn.Module):
  """(B, K, H, W, 3) segment frames, or (B, K, L, H, W, 3) segment clips for a 3D
  ``architecture`` -> (B, classes) logits averaged over the K segments."""
  depth: int
  width_multiplier: float
  num_classes: int
  dropout: float
  bn_axis_name: str | None = None
  architecture: str = 'resnet'
  vit_size: Any = None  # a ViT's size (models/vit.py ViTSpec); None: the architecture's own

  @nn.compact
  def __call__(self, frames, train: bool):
    b, k = frames.shape[:2]
    # Named 'backbone' like VCLR's, so a pretraining checkpoint's subtree loads as it is.
    backbone = make_backbone(self.architecture, self.depth, self.width_multiplier,
                             bn_axis_name=self.bn_axis_name, name='backbone',
                             vit_size=self.vit_size)
    feats = backbone(frames.reshape((b * k,) + frames.shape[2:]), train)
    feats = nn.Dropout(self.dropout, deterministic=not train)(feats.reshape(b, k, -1))
    return nn.Dense(self.num_classes, name='classifier')(feats).mean(axis=1)


@flax.struct.dataclass
class FinetuneState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw key data, a plain array in checkpoints


def finetune_dir(workdir: str, name: str) -> str:
  """RUN/finetune/<name>: one fine-tuning run of the pretraining run in RUN."""
  return str(epath.Path(workdir) / 'finetune' / name)


def _learning_rate(config, steps_per_epoch: int):
  """Step decay: base_lr, times decay_factor after each epoch in decay_epochs."""
  return optax.piecewise_constant_schedule(
      config.optim.base_lr,
      {int(epoch * steps_per_epoch): config.optim.decay_factor
       for epoch in config.optim.decay_epochs})


def _optimizer(config, steps_per_epoch: int):
  return optax.chain(optax.add_decayed_weights(config.optim.weight_decay),
                     optax.sgd(_learning_rate(config, steps_per_epoch),
                               momentum=config.optim.momentum))


def _initial_state(config, workdir, model, optimizer, mesh, clip_length: int):
  """(state, description, pretraining step or None): random init, with the backbone replaced
  by the pretraining run's when config.init says so."""
  size = config.data.image_size
  variables = model.init(jax.random.key(config.seed), jnp.zeros(
      (1,) + batch_layout.frames_shape(1, (size, size), clip_length)), train=False)
  # A ViT has no BatchNorm: no batch_stats.
  params = flax.core.unfreeze(variables['params'])
  batch_stats = dict(variables.get('batch_stats', {}))
  source, step = f'random init (seed {config.seed})', None
  if config.init == 'pretrained':
    step = None if config.checkpoint_step < 0 else config.checkpoint_step
    encoder, step = checkpointing.load_encoder_variables(workdir, step)
    train.check_same_structure(  # same error text as pretraining's init_from
        {'backbone': encoder['params']['backbone']}, {'backbone': params['backbone']},
        f'{workdir} (step {step})')
    params['backbone'] = encoder['params']['backbone']
    if batch_stats:
      batch_stats['backbone'] = encoder['batch_stats']['backbone']
    source = f'{workdir} step {step}'
  elif config.init != 'random':
    raise ValueError(f"config.init must be 'pretrained' or 'random', got {config.init!r}.")
  state = FinetuneState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                        opt_state=optimizer.init(params),
                        rng=jax.random.key_data(jax.random.key(config.seed + 1)))
  return jax.device_put(state, NamedSharding(mesh, P())), source, step


def make_train_step(model: TSN, optimizer, mesh, image_size: int,
                    crop_config: augment.AugmentConfig):
  """jit((state, batch) -> (state, metrics)) over the data mesh; BN statistics are synchronised.

  ``batch['frames']`` holds (B, K, H, W, 3) uint8 segment frames or (B, K, L, H, W, 3) clips;
  each frame (clip) gets a random resized crop and flip of ``crop_config`` here, with the
  pretraining step's code.
  """
  crop_config = crop_config.crops_only()

  def on_device(state: FinetuneState, batch):
    step_key, crop_key = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    rng = jax.random.fold_in(step_key, jax.lax.axis_index(DATA_AXIS))
    b, k = batch['frames'].shape[:2]
    sources = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
    frames = augment.augment_frames(batch['frames'], sources, train_step.crop_keys(crop_key, b, k),
                                    image_size, crop_config,
                                    platform=mesh.devices.flat[0].platform)

    def loss_fn(params):
      logits, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    frames, train=True, rngs={'dropout': rng},
                                    mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      accuracy = (logits.argmax(-1) == batch['label']).mean()
      # The global-batch mean: its gradient w.r.t. replicated params is the global gradient.
      return jax.lax.pmean(loss, DATA_AXIS), (jax.lax.pmean(accuracy, DATA_AXIS), mutated)

    (loss, (accuracy, mutated)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=jax.lax.pmean(mutated['batch_stats'], DATA_AXIS),
                              opt_state=opt_state)
    return new_state, {'loss': loss, 'accuracy': accuracy}

  return jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                               out_specs=(P(), P())), donate_argnums=(0,))


def evaluate_tsn(model: TSN, state: FinetuneState, config, mesh, clip_length: int = 1,
                 clip_stride: int = 1, log=print) -> dict[str, float]:
  """Top-1/top-5 on config.data.test_split: test_frames centre crops (clips of clip_length
  frames at clip_stride), predictions averaged."""
  from input_pipeline import eval_reader  # TensorFlow only where records are read
  from input_pipeline import records
  data = config.data
  source_dir = records.source_dir(data)
  per_host = config.test_batch_size // jax.process_count()
  batches = eval_reader.make_eval_iterator(
      source_dir, data.test_split, batch_size=per_host, num_frames=data.test_frames,
      crop_size=data.crop_size, resize_short_side=data.resize_short_side or None,
      clip_length=clip_length, clip_stride=clip_stride)
  num_batches = eval_reader.num_eval_batches(source_dir, data.test_split, batch_size=per_host)

  def on_device(state, frames):
    # Every test frame is a segment: the model's average consensus averages their logits.
    return model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                       augment.normalize_uint8(frames), train=False)

  predict = jax.jit(jax.shard_map(on_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                  out_specs=P(DATA_AXIS)))
  scores, labels, masks = [], [], []
  start = time.time()
  for index, batch in enumerate(global_batches.prefetch_to_mesh(batches, mesh)):
    scores.append(multihost_utils.process_allgather(predict(state, batch['frames']), tiled=True))
    labels.append(multihost_utils.process_allgather(batch['label'], tiled=True))
    masks.append(multihost_utils.process_allgather(batch['mask'], tiled=True))
    if (index + 1) % 10 == 0 or index + 1 == num_batches:
      rate = (index + 1) / (time.time() - start)
      log(f'TSN test: batch {index + 1}/{num_batches} | {rate:.2f} batches/s | '
          f'ETA {(num_batches - index - 1) / rate:.0f}s')
  keep = np.concatenate(masks).astype(bool)
  return linear.top_k_accuracies(np.concatenate(scores)[keep], np.concatenate(labels)[keep])


@checkpointing.closes_managers
def run_finetune(config: ml_collections.ConfigDict, workdir: str, log=print) -> dict[str, float]:
  """Fine-tunes (resuming if RUN/finetune/<name> holds a checkpoint), tests, records the result.

  ``config`` is one that config_checks.validate_eval_config accepted (python -m
  vclr_jax.evaluate runs it first)."""
  from input_pipeline import record_stream
  from input_pipeline import records
  from input_pipeline import tsn_reader
  data = config.data
  mesh = train_step.make_mesh()
  run_config = checkpointing.load_run_config(workdir)
  clip_length, clip_stride = batch_layout.clip_shape(run_config.data)
  source_dir = records.source_dir(data)
  index = records.read_index(source_dir, data.train_split)
  steps_per_epoch = index['num_videos'] // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f'config.batch_size={config.batch_size} exceeds the {index["num_videos"]} '
                     f'videos of {source_dir}/{data.train_split}.')
  total_steps = int(config.num_epochs * steps_per_epoch)
  model = TSN(run_config.model.depth, run_config.model.width_multiplier, index['num_classes'],
              config.dropout, bn_axis_name=DATA_AXIS,
              architecture=run_config.model.get('architecture', 'resnet'),
              vit_size=vit_spec(run_config.model))
  optimizer = _optimizer(config, steps_per_epoch)
  out_dir = finetune_dir(workdir, config.name)
  manager = checkpointing.make_manager(out_dir, config.checkpoint)
  state, source, pretraining_step = _initial_state(config, workdir, model, optimizer, mesh,
                                                     clip_length)
  restored = checkpointing.restore_latest(manager, state)
  if restored is not None:
    state = restored
    log(f'Resumed fine-tuning from {manager.directory} at step {int(state.step)}.')
  checkpointing.write_run_config(out_dir, config)
  start_step = int(jax.device_get(state.step))
  step_fn = make_train_step(model, optimizer, mesh, data.image_size,
                            augment.AugmentConfig.from_config(data.augment))
  host_iterator = tsn_reader.make_tsn_train_iterator(
      source_dir, data.train_split, batch_size=config.batch_size // jax.process_count(),
      frame_size=tuple(data.frame_size), num_segments=data.num_segments, seed=config.seed,
      clip_length=clip_length, clip_stride=clip_stride, start_step=start_step,
      options=record_stream.ReaderOptions.from_config(data))
  batches = global_batches.prefetch_to_mesh(host_iterator, mesh, data.prefetch)
  clips = f', clips of {clip_length} frames at stride {clip_stride}' if clip_length > 1 else ''
  log(f'TSN fine-tuning {source} on {config.dataset}: steps {start_step}..{total_steps} '
      f'({steps_per_epoch} per epoch, {data.num_segments} segments{clips}) in {out_dir}.')
  from clu import metric_writers  # imports TensorFlow for its summary writer
  writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(out_dir)) \
      if jax.process_index() == 0 else None
  result = training_loop.run(
      step_fn=step_fn, state=state,
      batches=({k: batch[k] for k in ('frames', 'label')} for batch in batches),
      manager=manager, mesh=mesh, start_step=start_step, total_steps=total_steps,
      batch_size=config.batch_size, log_every_steps=config.log_every_steps, log=log, writer=writer,
      describe=lambda step, means: (f'finetune step {step}/{total_steps} | loss '
                                    f'{means["loss"]:.4f} | acc {means["accuracy"]:.2f}'),
      window_extras=lambda _: {'skipped_examples': float(host_iterator.skipped_examples)},
      host_stop=lambda: host_iterator.stop_error)
  if jax.process_index() == 0:
    from vclr_jax import plots  # matplotlib and tensorboard, once at the end
    log(f'Fine-tuning curves: {plots.write_curves(out_dir)}')
  state = result.state
  metrics = evaluate_tsn(model, state, config, mesh, clip_length, clip_stride, log)
  table = results.record(workdir, dict(
      protocol=f'finetune ({config.name})', dataset=config.dataset, split=data.test_split,
      checkpoint_step=pretraining_step, checkpoint=source, metrics=metrics,
      settings=dict(init=config.init, num_segments=data.num_segments,
                    test_frames=data.test_frames, epochs=config.num_epochs,
                    finetune_steps=int(jax.device_get(state.step)), batch_size=config.batch_size,
                    base_lr=config.optim.base_lr,
                    **results.clip_settings(clip_length, clip_stride))))
  log(f'TSN fine-tuning on {config.dataset}/{data.test_split}: top1 {100 * metrics["top1"]:.2f}, '
      f'top5 {100 * metrics["top5"]:.2f}\n{table}')
  return metrics
