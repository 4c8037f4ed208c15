"""Converts a PyTorch weight file into an Orbax checkpoint of VCLR variables.

  python -m vclr_jax.interop.convert --input=moco_v2_800ep_pretrain.pth.tar --out=/ckpt/moco

The output directory is written with ``ocp.StandardCheckpointer().save(DIR, {'params': ...,
'batch_stats': ...})`` and can be given to ``--config.init_from``. Variables the file does not
hold (e.g. the heads of a torchvision file) keep a fresh initialisation from ``--seed``; the
list is printed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import traverse_util

from vclr_jax import checkpointing
from vclr_jax.interop.checkpoint_layouts import read_torch_weights
from vclr_jax.interop.loading import fill_variables
from vclr_jax.interop.torch_layout import flatten_variables, infer_architecture
from vclr_jax.models.resnet import feature_dim
from vclr_jax.models.vclr import VCLR


def _initialise_heads(model: VCLR, tuple_features):
  """Touches every head and the order classifier, so that ``init`` creates only those."""
  model.frame_embeddings(tuple_features[0])
  order = model.order_embeddings(tuple_features)
  return model.video_embedding(tuple_features), model.order_logits(order, order)


def _init_fn(depth: int, width_multiplier: float, with_backbone: bool):
  """rng -> fresh VCLR variables. Without the backbone, init costs seconds instead of up to a
  minute of compilation on CPU; Flax derives each module's randomness from its name, so the
  heads get the same values either way.

  Shapes do not depend on the frame size, so a tiny frame keeps the full init cheap; the tuple
  must have the 3 frames of training, which fix the order classifier's input size.
  """
  model = VCLR(depth=depth, width_multiplier=width_multiplier)
  if with_backbone:
    return lambda rng: model.init(rng, jnp.zeros((1, 3, 32, 32, 3)), train=False)
  features = jnp.zeros((1, 3, feature_dim(depth, width_multiplier)))
  return lambda rng: model.init(rng, features, method=_initialise_heads)


def convert(input_path: str, out_dir: str, depth: int | None = None,
            width_multiplier: float | None = None, seed: int = 0) -> dict:
  """Writes the Orbax checkpoint; returns the variables written."""
  import orbax.checkpoint as ocp

  out_dir = checkpointing.absolute(out_dir)
  if out_dir.exists():
    raise FileExistsError(f'{out_dir} already exists; choose a new --out directory.')
  weights = read_torch_weights(input_path)
  if depth is None or width_multiplier is None:
    inferred_depth, inferred_width = infer_architecture(weights.tensors)
    depth = inferred_depth if depth is None else depth
    width_multiplier = inferred_width if width_multiplier is None else width_multiplier
  rng = jax.random.PRNGKey(seed)
  shapes = jax.eval_shape(_init_fn(depth, width_multiplier, with_backbone=True), rng)
  variables, report = fill_variables(weights, shapes)
  print(report.summary())
  if report.missing:
    init = _init_fn(depth, width_multiplier,
                    with_backbone=any(path[1] == 'backbone' for path in report.missing))
    fresh = flatten_variables(jax.jit(init)(rng))
    flat = flatten_variables(variables)
    flat.update({path: np.asarray(fresh[path]) for path in report.missing})
    variables = traverse_util.unflatten_dict(flat)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out_dir, state, custom_metadata={
      'converted_from': str(checkpointing.absolute(input_path)), 'layout': weights.layout,
      'depth': depth, 'width_multiplier': width_multiplier})
  checkpointer.wait_until_finished()
  print(f'Wrote Orbax checkpoint {out_dir} (ResNet-{depth}, width x{width_multiplier}); '
        f'variables not in the file were initialised with seed {seed}.')
  return state


def _define_flags():
  # Defined only when run as a program, so importing this module (tests, the trainer) adds no
  # global flags that could clash with another program's.
  flags.DEFINE_string('input', None, 'PyTorch weight file (.pth/.pt/.tar/.safetensors).',
                      required=True)
  flags.DEFINE_string('out', None, 'Orbax checkpoint directory to create.', required=True)
  flags.DEFINE_integer('depth', None, 'ResNet depth; inferred from the file if unset.')
  flags.DEFINE_float('width_multiplier', None,
                     'ResNet width multiplier; inferred from the file if unset.')
  flags.DEFINE_integer('seed', 0, 'Initialisation of the variables the file lacks.')


def main(argv):
  del argv
  f = flags.FLAGS
  convert(f.input, f.out, f.depth, f.width_multiplier, f.seed)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
