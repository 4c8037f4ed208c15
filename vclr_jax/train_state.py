"""The whole pretraining state as one pytree, the optimiser and the learning-rate schedule.

Everything a run needs to continue bit-exactly lives in TrainState, so one Orbax save of it
is a complete checkpoint: the online network, the EMA key encoder, SGD momentum, both
negative queues with their write positions, the step, the RNG and the non-finite counters.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vclr_jax import batch as batch_layout
from vclr_jax.models.vclr import VCLR, vit_spec


# float64 exists for numerical checks (two computations compared tightly), not for training.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  ema_params: Any
  ema_batch_stats: Any
  opt_state: Any
  queue_inter: jax.Array
  queue_video: jax.Array
  queue_inter_pos: jax.Array
  queue_video_pos: jax.Array
  rng: jax.Array  # raw uint32 key data, so checkpoints hold a plain array
  nonfinite_in_a_row: jax.Array
  nonfinite_total: jax.Array


def build_model(model_config: ml_collections.ConfigDict, *, bn_groups: int = 1,
                bn_axis_name: str | None = None) -> VCLR:
  """The VCLR module described by ``config.model``, with the given BatchNorm grouping."""
  dtype = COMPUTE_DTYPES.get(model_config.compute_dtype)
  if dtype is None:
    raise ValueError(f'config.model.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got '
                     f'{model_config.compute_dtype!r}.')
  if dtype == jnp.float64 and not jax.config.jax_enable_x64:
    raise ValueError("config.model.compute_dtype='float64' needs 64-bit JAX: set "
                     'JAX_ENABLE_X64=1 or run inside `with jax.enable_x64(True):`.')
  # Run configs written before 3D backbones existed (evaluation reads them) have no architecture.
  return VCLR(architecture=model_config.get('architecture', 'resnet'), depth=model_config.depth,
              width_multiplier=model_config.width_multiplier,
              embed_dim=model_config.embed_dim, order_norm=model_config.order_norm,
              bn_groups=bn_groups, bn_axis_name=bn_axis_name, dtype=dtype,
              vit_size=vit_spec(model_config))


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_videos: int) -> int:
  steps = num_train_videos // config.batch_size
  if steps < 1:
    raise ValueError(f'config.batch_size={config.batch_size} is larger than the training set '
                     f'({num_train_videos} videos): lower config.batch_size.')
  return steps


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule of the released code: base_lr x global batch / 256."""
  return config.optim.base_lr * config.batch_size / 256


SCHEDULES = ('cosine', 'step')


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train_videos: int):
  """Linear warm-up from peak/100 to peak over warmup_epochs, then config.optim.schedule:
  'cosine', per step down to final_lr; or 'step', the peak multiplied by decay_factor at the
  start of each of decay_epochs (epochs since the run's start; the 3D recipes of the paper's
  appendix, e.g. x0.1 at epochs 150 and 250)."""
  per_epoch = steps_per_epoch(config, num_train_videos)
  peak = peak_learning_rate(config)
  warmup_steps = int(config.optim.warmup_epochs * per_epoch)
  total_steps = int(config.num_epochs * per_epoch)
  if total_steps <= warmup_steps:
    raise ValueError(f'config.num_epochs={config.num_epochs} must exceed '
                     f'config.optim.warmup_epochs={config.optim.warmup_epochs}.')
  warmup = optax.linear_schedule(peak / 100, peak, warmup_steps)
  if config.optim.schedule == 'step':
    # join_schedules hands the second schedule the steps since the warm-up's end.
    decay = optax.piecewise_constant_schedule(
        peak, {int(epoch * per_epoch) - warmup_steps: config.optim.decay_factor
               for epoch in config.optim.decay_epochs})
  else:
    decay = optax.cosine_decay_schedule(peak, total_steps - warmup_steps,
                                        alpha=config.optim.final_lr / peak)
  return optax.join_schedules([warmup, decay], [warmup_steps])


OPTIMIZERS = ('sgd', 'adamw')
# Leaves AdamW does not decay: every norm's scale and every bias (the 1-D parameters), the
# ViT's position embedding and class token (timm's and DeiT's no_weight_decay rule).
NO_WEIGHT_DECAY = ('scale', 'bias', 'pos_embed', 'cls_token')
ADAMW_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which MoCo v3 keeps
FROZEN_PATCH_EMBEDDING = ('backbone', 'patch_embed')  # the ViT's patch projection


def weight_decay_mask(params):
  """True for the parameters AdamW decays: all but the NO_WEIGHT_DECAY leaves."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[-1].key not in NO_WEIGHT_DECAY, params)


def _frozen_labels(params):
  """'frozen' for the ViT's patch projection (config.model.freeze_patch_embedding), else
  'trained'."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'frozen' if tuple(p.key for p in path[:2]) == FROZEN_PATCH_EMBEDDING
      else 'trained', params)


def make_optimizer(config: ml_collections.ConfigDict, num_train_videos: int):
  """config.optim.name: 'sgd' is torch.optim.SGD(momentum, weight_decay) on every parameter
  (decay added to the gradient); 'adamw' is torch.optim.AdamW (decoupled decay, scaled by the
  learning rate) with config.optim.betas, not decaying the NO_WEIGHT_DECAY leaves.

  With config.model.freeze_patch_embedding a ViT's patch projection keeps its random
  initialisation (MoCo v3's fix for training instability): it gets no update and no optimiser
  state.
  """
  schedule = learning_rate_schedule(config, num_train_videos)
  name = config.optim.get('name', 'sgd')
  if name == 'adamw':
    b1, b2 = config.optim.get('betas', ADAMW_BETAS)
    optimizer = optax.adamw(schedule, b1=b1, b2=b2, eps=1e-8,
                            weight_decay=config.optim.weight_decay, mask=weight_decay_mask)
  elif name == 'sgd':
    optimizer = optax.chain(
        optax.add_decayed_weights(config.optim.weight_decay),
        optax.sgd(schedule, momentum=config.optim.momentum, nesterov=False))
  else:
    raise ValueError(f'config.optim.name must be one of {OPTIMIZERS}, got {name!r}.')
  if config.model.get('freeze_patch_embedding', False):
    optimizer = optax.multi_transform({'trained': optimizer, 'frozen': optax.set_to_zero()},
                                      _frozen_labels)
  return optimizer


def initial_queue(rng, size: int, dim: int) -> jax.Array:
  """The reference's queue init: uniform in +-1/sqrt(dim / 3), not normalised."""
  bound = 1.0 / jnp.sqrt(dim / 3.0)
  return jax.random.uniform(rng, (size, dim), jnp.float32, -bound, bound)


def create_train_state(config: ml_collections.ConfigDict, num_train_videos: int,
                       rng: jax.Array) -> TrainState:
  """A fresh state: random init (torchvision's), EMA = online, queues as the reference.

  ``rng`` is a typed key (jax.random.key).
  """
  model = build_model(config.model)
  init_rng, inter_rng, video_rng, state_rng = jax.random.split(rng, 4)
  size = config.data.image_size
  variables = model.init(init_rng, jnp.zeros((1,) + batch_layout.frames_shape(
      3, (size, size), config.data.clip_length), jnp.float32), train=False)
  # A ViT has no BatchNorm: its statistics are an empty tree.
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  optimizer = make_optimizer(config, num_train_videos)
  state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      # Copies, so that donating the state never hands XLA one buffer twice.
      ema_params=jax.tree.map(jnp.copy, params),
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
      opt_state=optimizer.init(params),
      queue_inter=initial_queue(inter_rng, config.queue_size, config.model.embed_dim),
      queue_video=initial_queue(video_rng, config.queue_size, config.model.embed_dim),
      queue_inter_pos=jnp.zeros((), jnp.int32),
      queue_video_pos=jnp.zeros((), jnp.int32),
      rng=jax.random.key_data(state_rng),
      nonfinite_in_a_row=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
  )
  if model.dtype == jnp.float64:
    # Parameters, statistics, momentum and queues in float64 too, so nothing rounds to float32.
    state = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
  return state
