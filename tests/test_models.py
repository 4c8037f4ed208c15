"""Parameter counts and shapes of the torchvision-layout ResNet and the VCLR network."""

import jax
import jax.numpy as jnp
import numpy as np

from vclr_jax.models.resnet import ResNet, feature_dim
from vclr_jax.models.vclr import VCLR


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_resnet50_parameter_count_and_output_shape():
  model = ResNet(depth=50)
  frames = jnp.zeros((2, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), frames, train=False))
  assert count(variables['params']) == 23_508_032  # torchvision resnet50 without fc
  out = jax.eval_shape(lambda v: model.apply(v, frames, train=False), variables)
  assert out.shape == (2, 2048)


def test_vclr_parameter_count_and_outputs():
  model = VCLR()
  tuples = jnp.zeros((2, 3, 224, 224, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), tuples, train=False))
  assert count(variables['params']) == 41_345_604
  out = jax.eval_shape(lambda v: model.apply(v, tuples, train=False), variables)
  assert out['inter'].shape == (6, 128) and out['video'].shape == (2, 128)
  assert out['order_logits'].shape == (2, 4)


def test_small_model_runs_and_embeddings_are_unit_norm():
  model = VCLR(depth=18, width_multiplier=0.125)
  tuples = jax.random.normal(jax.random.key(1), (2, 3, 80, 80, 3))
  variables = model.init(jax.random.key(0), tuples, train=False)
  out, _ = model.apply(variables, tuples, train=True, mutable=['batch_stats'])
  assert feature_dim(18, 0.125) == 64
  for name in ('inter', 'intra', 'video'):
    # float32 x / ||x|| over 128 values: the sum of squares rounds by at most ~(128/2) ulp.
    np.testing.assert_allclose(np.linalg.norm(out[name], axis=-1), 1.0, rtol=1e-5)


def test_order_norm_switch_normalises_over_frames():
  tuples = jax.random.normal(jax.random.key(1), (2, 3, 80, 80, 3))
  feats = jax.random.normal(jax.random.key(2), (2, 3, 64))
  for norm, axis in (('per_frame', -1), ('over_frames', 1)):
    model = VCLR(depth=18, width_multiplier=0.125, order_norm=norm)
    variables = model.init(jax.random.key(0), tuples, train=False)
    emb = model.apply(variables, feats, method='order_embeddings')
    # float32 normalisation over at most 128 values, as above.
    np.testing.assert_allclose(np.linalg.norm(emb, axis=axis), 1.0, rtol=1e-5)


def test_batchnorm_groups_normalise_each_group_separately():
  from vclr_jax.models.resnet import BatchNorm
  with jax.enable_x64(True):  # float64, so each group's moments can be checked to 1e-12
    x = jnp.concatenate([jnp.full((4, 2, 2, 3), 5.0), jnp.full((4, 2, 2, 3), -1.0)])
    x = x + jax.random.normal(jax.random.key(0), x.shape, jnp.float64)
    bn = BatchNorm(groups=2, dtype=jnp.float64)
    variables = bn.init(jax.random.key(0), x, train=True)
    y, _ = bn.apply(variables, x, train=True, mutable=['batch_stats'])
    x, y = np.asarray(x), np.asarray(y)  # NumPy float64 from here on
  assert y.dtype == np.float64
  for group, inputs in ((y[:4], x[:4]), (y[4:], x[4:])):
    variance = np.var(inputs, axis=(0, 1, 2))
    np.testing.assert_allclose(group.mean(axis=(0, 1, 2)), 0.0, atol=1e-12)
    # torch's BN divides by sqrt(var + eps), so the output variance is var / (var + eps).
    np.testing.assert_allclose(group.var(axis=(0, 1, 2)), variance / (variance + 1e-5),
                               rtol=1e-12)
