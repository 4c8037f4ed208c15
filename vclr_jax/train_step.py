"""The data-parallel VCLR train step: SPMD code over the 1-D ``data`` mesh under jax.shard_map.

Per device, one step (a "frame" is a clip of config.data.clip_length frames with a 3D
backbone: vclr_jax/batch.py; the code is the same)
0. cuts the seven augmented crops of every example from its six uint8 frames
   (vclr_jax/augment.py): the query tuple, the key tuple and x1, a second crop of the anchor;
1. encodes x1, x2, x3 and the key tuple with the EMA key encoder (shuffle-BN or SyncBN),
   giving the keys k1, k2, k3 (inter and intra heads), the video key and the key order
   embeddings;
2. encodes the query tuple with the online encoder (per-device BN or SyncBN), and the
   anchor xq, one of the tuple's frames;
3. takes the gradient of the global-batch mean of inter + intra + video + order losses
   (weighted by config.loss) and applies SGD at the schedule's rate for ``state.step``;
4. moves the EMA encoder towards the new online weights and writes the gathered keys into
   the queues;
5. keeps the old state (but the step and counters) when the loss, the gradient, or any new
   weight or BN statistic (online or EMA) is not finite.

config.model.bn_batching decides which frames share a BatchNorm batch (docs/training.md, BatchNorm):
'fused' runs one key pass over all 6B frames of a device and takes xq's features from the
query tuple's pass (xq is the same augmented image); 'reference' runs the released code's
passes, each its own BN batch, in its order: key encoder x1 (B), x2 (B), x3 (B), key tuple
(3B), each shuffled on its own; online encoder xq (B), then the query tuple (3B). The running
statistics are updated once per pass, in that order, as torch's BatchNorm does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vclr_jax import augment
from vclr_jax import batch as batch_layout
from vclr_jax import losses
from vclr_jax.models.resnet import accumulation_dtype
from vclr_jax.models.vclr import has_batch_norm
from vclr_jax.train_state import TrainState, build_model, create_train_state
from vclr_jax.train_state import learning_rate_schedule, make_optimizer

DATA_AXIS = 'data'
BN_MODES = {'online_bn': ('per_device', 'sync'), 'key_bn': ('shuffle', 'sync'),
            'bn_batching': ('fused', 'reference')}


def make_mesh(devices=None) -> Mesh:
  """A 1-D data mesh over ``devices`` (default: every device of every host)."""
  devices = jax.devices() if devices is None else devices
  axis_types = (jax.sharding.AxisType.Explicit,)
  num_slices = len({getattr(device, 'slice_index', 0) for device in devices})
  if num_slices > 1:
    # TPU multislice: jax.make_mesh refuses it; slices become consecutive runs of the axis.
    from jax.experimental import mesh_utils
    ordered = mesh_utils.create_hybrid_device_mesh(
        (len(devices) // num_slices,), (num_slices,), devices)
    return Mesh(ordered, (DATA_AXIS,), axis_types=axis_types)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices, axis_types=axis_types)


MAX_SHUFFLE_DEVICES = 8  # the released run's 8 GPUs: a key mixes with at most 7 other devices


def _shift(num_devices: int, offset: int) -> list[tuple[int, int]]:
  return [(i, (i + offset) % num_devices) for i in range(num_devices)]


def shuffled_across_devices(apply_fn, frames, rng, neighbourhood: int):
  """Runs ``apply_fn`` on frames shuffled over ``neighbourhood`` devices; rows return in order.

  Each device permutes its n frames and cuts them into ``neighbourhood`` (G) equal parts;
  part r goes to the device r places further on the ring (G - 1 ppermutes), so every device
  receives one part from itself and from each of its G - 1 predecessors. The received parts
  are interleaved (frame i of the mixed batch comes from device i mod G back), so every BN
  group of two or more frames holds keys of at least two devices' examples: a key is never
  normalised only with the batch its query's BN statistics came from (MoCo's shuffle-BN).
  The outputs travel back the same way. Any device count works: G only has to divide n.
  On one device (G = 1) the mixing comes from the BN groups over the permuted batch.
  """
  num_devices = jax.lax.axis_size(DATA_AXIS)
  n = frames.shape[0]
  perm = jax.random.permutation(jax.random.fold_in(rng, jax.lax.axis_index(DATA_AXIS)), n)
  parts = frames[perm].reshape((neighbourhood, n // neighbourhood) + frames.shape[1:])
  received = [parts[0]] + [jax.lax.ppermute(parts[r], DATA_AXIS, _shift(num_devices, r))
                           for r in range(1, neighbourhood)]
  outputs, aux = apply_fn(jnp.stack(received, axis=1).reshape(frames.shape))
  outputs = outputs.reshape((n // neighbourhood, neighbourhood) + outputs.shape[1:])
  back = [outputs[:, 0]] + [jax.lax.ppermute(outputs[:, r], DATA_AXIS, _shift(num_devices, -r))
                            for r in range(1, neighbourhood)]
  back = jnp.concatenate(back)
  return jnp.zeros_like(back).at[perm].set(back), aux


def key_pass_frames(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """Frames per device in the key encoder's smallest BN batch: 6B fused, B (x1) reference."""
  per_device = config.batch_size // num_devices
  if config.model.bn_batching == 'reference':
    return per_device
  return batch_layout.NUM_FRAMES * per_device


def default_shuffle_devices(key_frames_per_device: int, num_devices: int) -> int:
  """The largest neighbourhood of at most 8 devices whose size divides a device's key pass."""
  return max(g for g in range(1, min(MAX_SHUFFLE_DEVICES, num_devices) + 1)
             if key_frames_per_device % g == 0)


def resolve_shuffle_bn(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Writes the values the step uses for config.model's automatic (0) shuffle-BN settings."""
  config.model.shuffle_bn_devices = shuffle_bn_devices(config, num_devices)
  config.model.shuffle_bn_groups_per_device = shuffle_bn_groups(config, num_devices)


def other_segments(anchor):
  """Indices of x2 and x3: the two segments other than the anchor's, in temporal order."""
  return jnp.where(anchor == 0, 1, 0), jnp.where(anchor == 2, 1, 2)


def _rows(x, index):
  return x[jnp.arange(x.shape[0]), index]


def _in_shown_order(embeddings, perm):
  """(B, 3, D) per-frame embeddings reordered as the tuple was shown: row b is embeddings[b, perm[b]]."""
  return jnp.take_along_axis(embeddings, perm[..., None], axis=1)


def _gathered(x):
  """All devices' rows of x, device-major, as one value every device holds identically.

  Placing the local rows in a zero buffer and summing over devices gives the same rows as
  an all-gather, with a result the shard_map type system knows is replicated.
  """
  rows = x.shape[0]
  buffer = jnp.zeros((jax.lax.axis_size(DATA_AXIS) * rows,) + x.shape[1:], x.dtype)
  buffer = jax.lax.dynamic_update_slice_in_dim(buffer, x, jax.lax.axis_index(DATA_AXIS) * rows, 0)
  return jax.lax.psum(buffer, DATA_AXIS)


def _enqueue(queue, position, blocks):
  """Writes each (global batch, D) block at ``position`` in turn, wrapping at the queue's end."""
  for block in blocks:
    queue = jax.lax.dynamic_update_slice(queue, block.astype(queue.dtype),
                                         (position, jnp.zeros_like(position)))
    position = (position + block.shape[0]) % queue.shape[0]
  return queue, position


def crop_keys(key, per_device: int, crops_per_example: int):
  """(per_device, crops) keys of this device's examples, from their global batch positions."""
  global_index = jax.lax.axis_index(DATA_AXIS) * per_device + jnp.arange(per_device)
  return augment.example_keys(key, global_index, crops_per_example)


def augmented_views(batch, key, image_size: int, config: augment.AugmentConfig, dtype,
                    output_dtype=None, platform=None):
  """The crops the encoders see, from one device's shard of a batch of uint8 frames, computed
  in ``dtype`` and written in ``output_dtype`` (default ``dtype``): the encoders' compute
  dtype, to which their first layer casts its input anyway.

  Returns ``batch`` with the frames replaced by 'query_frames' and 'key_frames' (B, 3, S, S, 3)
  and 'x1' (B, S, S, 3). Crop c of the example at global position g draws from
  fold_in(key, g), so every device count gives the same crops. With clips every crop gains the
  clip axis after the tuple axis ((B, 3, L, S, S, 3), x1 (B, L, S, S, 3)): x1 is the anchor
  clip augmented again with its own draws, and the rest of the step treats a clip as a frame.
  """
  frames = batch['frames']
  b = frames.shape[0]
  keys = crop_keys(key, b, batch_layout.NUM_FRAMES + 1)
  sources = jnp.concatenate([jnp.broadcast_to(jnp.arange(batch_layout.NUM_FRAMES),
                                              (b, batch_layout.NUM_FRAMES)),
                             batch['anchor'][:, None]], axis=1).astype(jnp.int32)
  crops = augment.augment_frames(frames, sources, keys, image_size, config, dtype, output_dtype,
                                 platform)
  views = {name: value for name, value in batch.items() if name != 'frames'}
  return dict(views, query_frames=crops[:, :3], key_frames=crops[:, 3:6], x1=crops[:, 6])


def _key_encoder_outputs(key_model, state, batch, rng, shuffle_devices: int, reference: bool):
  """EMA-encoder embeddings of x1, x2, x3 and the key tuple, and its updated BN statistics."""
  frames, anchor = batch['query_frames'], batch['anchor']
  other_a, other_b = other_segments(anchor)
  b = anchor.shape[0]
  key_tuple = batch['key_frames']
  passes = [batch['x1'], _rows(frames, other_a), _rows(frames, other_b),
            key_tuple.reshape((3 * b,) + key_tuple.shape[2:])]
  if not reference:
    passes = [jnp.concatenate(passes)]
  batch_stats = state.ema_batch_stats
  feats = []
  for index, inputs in enumerate(passes):
    # Shuffled frames travel between devices in the compute dtype (bfloat16 halves the bytes);
    # the encoder's first convolution would cast them to it anyway.
    inputs = inputs.astype(key_model.dtype)
    variables = {'params': state.ema_params, 'batch_stats': batch_stats}

    def features(x, variables=variables):
      out, mutated = key_model.apply(variables, x, train=True, method='features',
                                     mutable=['batch_stats'])
      return out, mutated['batch_stats']

    if shuffle_devices:
      out, batch_stats = shuffled_across_devices(features, inputs, jax.random.fold_in(rng, index),
                                                 shuffle_devices)
    else:
      out, batch_stats = features(inputs)
    feats.append(out)
  feats = jnp.concatenate(feats)

  def heads(module, feats):
    frame = module.frame_embeddings(feats[:3 * b])
    tuple_features = feats[3 * b:].reshape(b, 3, -1)
    return dict(
        inter=jnp.split(frame['inter'], 3), intra=jnp.split(frame['intra'], 3),
        video=module.video_embedding(tuple_features),
        order=_in_shown_order(module.order_embeddings(tuple_features), batch['key_perm']))

  keys = key_model.apply({'params': state.ema_params}, feats, method=heads)
  return jax.lax.stop_gradient(keys), batch_stats


def _online_loss(params, online_model, state, batch, keys, queues, loss_config, reference: bool):
  """Weighted sum of the four losses for the online encoder, with metrics and new BN stats."""
  frames, anchor = batch['query_frames'], batch['anchor']
  b = anchor.shape[0]

  def forward(module):
    # Within one apply the second call of the backbone reads the running statistics the
    # first call wrote, so 'reference' updates them after xq and again after the tuple.
    anchor_feats = module.features(_rows(frames, anchor), train=True) if reference else None
    feats = module.features(frames.reshape((3 * b,) + frames.shape[2:]), train=True)
    tuple_features = feats.reshape(b, 3, -1)
    if anchor_feats is None:
      anchor_feats = _rows(tuple_features, anchor)
    frame = module.frame_embeddings(anchor_feats)
    order = _in_shown_order(module.order_embeddings(tuple_features), batch['query_perm'])
    return dict(frame, video=module.video_embedding(tuple_features),
                order_logits=module.order_logits(order, keys['order']))

  out, mutated = online_model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    method=forward, mutable=['batch_stats'])
  queue_inter, queue_video = queues
  t = loss_config.temperature
  terms, metrics = {}, {}
  terms['inter'], m = losses.inter_frame_loss(out['inter'], *keys['inter'], queue_inter, t)
  metrics.update(m)
  terms['intra'], m = losses.intra_frame_loss(out['intra'], *keys['intra'], t)
  metrics.update(m)
  terms['video'], m = losses.video_loss(out['video'], keys['video'], queue_video, t)
  metrics.update(m)
  terms['order'], m = losses.order_loss(out['order_logits'], batch['order_label'])
  metrics.update(m)
  metrics.update({f'loss_{name}': value for name, value in terms.items()})
  # Averaging over devices here makes the loss the global-batch mean, so its gradient with
  # respect to the replicated parameters is already the global gradient (shard_map sums
  # the per-device contributions of a replicated input).
  metrics = jax.lax.pmean(metrics, DATA_AXIS)
  total = sum(loss_config.weights[name] * metrics[f'loss_{name}'] for name in terms)
  metrics['loss'] = total
  return total, (metrics, mutated['batch_stats'])


def make_train_step(config: ml_collections.ConfigDict, mesh: Mesh, optimizer, learning_rate_fn):
  """The jitted step ``(state, batch) -> (state, metrics)``; the state is donated.

  ``batch`` holds global arrays sharded over the mesh's data axis (vclr_jax/batch.py: uint8
  frames; the crops are cut in the step); every returned metric is a replicated scalar averaged over the global batch.
  ``config`` is one that config_checks.validate_config accepts for ``mesh.size`` devices.
  """
  # A ViT has no BatchNorm, so its keys need no shuffling: one plain fused key pass.
  shuffle = (config.model.key_bn == 'shuffle'
             and has_batch_norm(config.model.architecture))
  shuffle_devices = shuffle_bn_devices(config, mesh.size) if shuffle else 0
  online_model = build_model(
      config.model, bn_axis_name=DATA_AXIS if config.model.online_bn == 'sync' else None)
  key_model = build_model(
      config.model, bn_groups=shuffle_bn_groups(config, mesh.size) if shuffle else 1,
      bn_axis_name=None if shuffle else DATA_AXIS)
  momentum = config.ema_momentum
  reference = config.model.bn_batching == 'reference'
  augment_config = augment.AugmentConfig.from_config(config.data.augment)
  augment_dtype = accumulation_dtype(online_model.dtype)

  def step_on_device(state: TrainState, batch):
    rng, augment_rng = jax.random.split(
        jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))
    batch = augmented_views(batch, augment_rng, config.data.image_size, augment_config,
                            augment_dtype, online_model.dtype, mesh.devices.flat[0].platform)
    keys, ema_batch_stats = _key_encoder_outputs(key_model, state, batch, rng, shuffle_devices,
                                                   reference)
    queues = (state.queue_inter, state.queue_video)
    grad_fn = jax.grad(_online_loss, has_aux=True)
    grads, (metrics, batch_stats) = grad_fn(state.params, online_model, state, batch, keys,
                                            queues, config.loss, reference)
    batch_stats, ema_batch_stats = jax.lax.pmean((batch_stats, ema_batch_stats), DATA_AXIS)

    # The schedule runs on the optimiser's own step count, which a skipped step would leave
    # behind state.step; set to state.step, the applied (and logged) rate is the schedule's there.
    opt_state = optax.tree.set(state.opt_state, count=state.step)
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = jax.tree.map(lambda k, q: momentum * k + (1 - momentum) * q,
                              state.ema_params, params)
    queue_inter, inter_pos = _enqueue(state.queue_inter, state.queue_inter_pos,
                                      [_gathered(k) for k in keys['inter']])
    queue_video, video_pos = _enqueue(state.queue_video, state.queue_video_pos,
                                      [_gathered(keys['video'])])

    grad_norm = optax.tree.norm(grads)
    # Finite loss and gradient can still overflow the weights (a huge learning rate);
    # such weights would make every later step non-finite, so they are not kept either.
    # One reduction over everything: per-leaf tests joined by `&` made XLA copy the chain of
    # 155 tests into each of the ~440 selects below (CPU compile 25 s instead of 11 s).
    checked = (metrics['loss'], grad_norm, params, batch_stats, ema_params, ema_batch_stats)
    finite = jnp.isfinite(jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(checked)])).all()
    updated = state.replace(
        params=params, batch_stats=batch_stats, ema_params=ema_params,
        ema_batch_stats=ema_batch_stats, opt_state=opt_state,
        queue_inter=queue_inter, queue_video=queue_video,
        queue_inter_pos=inter_pos, queue_video_pos=video_pos)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    new_state = new_state.replace(
        step=state.step + 1,
        nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
    metrics.update(grad_norm=grad_norm, learning_rate=learning_rate_fn(state.step),
                   skipped_nonfinite=(~finite).astype(jnp.float32),
                   nonfinite_in_a_row=new_state.nonfinite_in_a_row)
    return new_state, metrics

  sharded = jax.shard_map(step_on_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                          out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


def abstract_step(config: ml_collections.ConfigDict, mesh: Mesh, num_videos: int):
  """(step, state, batch): the train step for ``mesh`` with its state and batch as abstract
  arrays (shapes, dtypes, shardings; no data), for ahead-of-time compiles and cost analyses."""
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
  state_shapes = jax.eval_shape(lambda rng: create_train_state(config, num_videos, rng),
                                jax.random.key(config.seed))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                       state_shapes)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=split)
           for name, (shape, dtype) in batch_layout.batch_shapes(
               config.batch_size, tuple(config.data.frame_size),
               config.data.clip_length).items()}
  step = make_train_step(config, mesh, make_optimizer(config, num_videos),
                         learning_rate_schedule(config, num_videos))
  return step, state, batch


def replicate(tree, mesh: Mesh):
  """Places a pytree on every device of the mesh, unsharded."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shuffle_bn_devices(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """config.model.shuffle_bn_devices, where 0 means default_shuffle_devices."""
  if config.model.shuffle_bn_devices:
    return config.model.shuffle_bn_devices
  return default_shuffle_devices(key_pass_frames(config, num_devices), num_devices)


def shuffle_bn_groups(config: ml_collections.ConfigDict, num_devices: int) -> int:
  """config.model.shuffle_bn_groups_per_device, where 0 means max(1, 8 // devices): one GPU
  still normalises keys in the released 8-GPU run's 8 BN groups."""
  return config.model.shuffle_bn_groups_per_device or max(1, MAX_SHUFFLE_DEVICES // num_devices)
