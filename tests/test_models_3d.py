"""R3D-18 and S3D backbones: torchvision's sizes, layers and initialisation, its features from
our exports, bit-exact imports, and BatchNorm's statistics over clips."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn
from flax import traverse_util

from vclr_jax.export import export_and_verify
from vclr_jax.interop import load_pytorch_variables
from vclr_jax.interop.exporting import export_encoder, export_metadata, metadata_path
from vclr_jax.interop.torch_layout import torch_name
from vclr_jax.interop.torchvision_compat import import_torchvision
from vclr_jax.interop.verification import (backbone_features, torch_features,
                                           torchvision_video_model)
from vclr_jax.models.resnet import BatchNorm, conv_kernel_init
from vclr_jax.models.video3d import (S3D_BN, conv3d_as_2d_convs, feature_dim,
                                     torch_default_conv_init, video_backbone)

torchvision = import_torchvision()
ARCHITECTURES = ('r3d_18', 's3d')
TORCHVISION_MODELS = {'r3d_18': torchvision.models.video.r3d_18,
                      's3d': torchvision.models.video.s3d}
CLASSIFIER_PREFIX = {'r3d_18': 'fc.', 's3d': 'classifier.'}
# torchvision's own classifier keys, which an import must pass over.
CLASSIFIER_SHAPES = {'r3d_18': {'fc.weight': (400, 512), 'fc.bias': (400,)},
                     's3d': {'classifier.1.weight': (400, 1024, 1, 1, 1),
                             'classifier.1.bias': (400,)}}
SMALL_WIDTH = 0.125
# (frames, pixels) of the test clips: r3d_18 takes any; s3d strides time 8x and its features
# need at least 5 frames.
CLIPS = {'r3d_18': (4, 80), 's3d': (8, 80)}
# float32 convolutions in two libraries agree to ~1e-6 on O(1) features; a wrong weight
# mapping moves them by O(1).
FLOAT32_ATOL = 1e-4
STEP = 99


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@functools.cache
def variable_shapes(architecture, width_multiplier):
  """Shapes of the backbone's variables (they do not depend on the clip: S3D's smallest)."""
  model = video_backbone(architecture, width_multiplier)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 5, 17, 17, 3)),
                                           train=False))


def random_variables(architecture, width_multiplier, seed):
  """Random variables, BatchNorm statistics included, under 'backbone' as in a VCLR model.

  Filled with numpy from the shapes (no init to compile). Convs are He-normal on fan-in and BN
  scales stay near 1, so that through S3D's ~30 inference-mode BN layers the features stay O(1)
  and the absolute tolerance means something.
  """
  rng = np.random.default_rng(seed)

  def fill(path, shape):
    if path[-1] == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
    return {'scale': lambda: rng.uniform(0.8, 1.2, shape),
            'bias': lambda: rng.normal(0, 0.1, shape),
            'mean': lambda: rng.normal(0, 0.1, shape),
            'var': lambda: rng.uniform(0.5, 2.0, shape)}[path[-1]]()

  shapes = variable_shapes(architecture, width_multiplier)
  return {collection: {'backbone': traverse_util.unflatten_dict({
      path: fill(path, leaf.shape).astype(np.float32)
      for path, leaf in traverse_util.flatten_dict(tree).items()})}
          for collection, tree in shapes.items()}


def metadata(architecture, width_multiplier):
  return export_metadata(architecture=architecture, width_multiplier=width_multiplier,
                         step=STEP, source='/runs/test3d')


def random_clips(architecture, seed=0):
  frames, size = CLIPS[architecture]
  return np.random.default_rng(seed).standard_normal((2, frames, size, size, 3), np.float32)


def assert_variables_equal(actual, expected):
  """Every leaf, params and batch stats, bit for bit."""
  for collection in ('params', 'batch_stats'):
    flat_actual = traverse_util.flatten_dict(actual[collection])
    flat_expected = traverse_util.flatten_dict(expected[collection])
    assert flat_actual.keys() == flat_expected.keys()
    for path, value in flat_expected.items():
      assert flat_actual[path].dtype == value.dtype, path
      np.testing.assert_array_equal(flat_actual[path], value, err_msg=str(path))


# Sizes.

@pytest.mark.parametrize('architecture, features', [('r3d_18', 512), ('s3d', 1024)])
def test_parameter_counts_and_feature_sizes_equal_torchvision(architecture, features):
  torch_model = TORCHVISION_MODELS[architecture]()
  classifier = sum(p.numel() for name, p in torch_model.named_parameters()
                   if name.startswith(CLASSIFIER_PREFIX[architecture]))
  expected = sum(p.numel() for p in torch_model.parameters()) - classifier
  assert count(variable_shapes(architecture, 1.0)['params']) == expected
  assert feature_dim(architecture) == features
  # The narrow torchvision network the exports are checked against has our size too.
  narrow = torchvision_video_model(architecture, SMALL_WIDTH)
  assert (count(variable_shapes(architecture, SMALL_WIDTH)['params'])
          == sum(p.numel() for p in narrow.parameters()))
  model = video_backbone(architecture, SMALL_WIDTH)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variable_shapes(architecture, SMALL_WIDTH),
                       jax.ShapeDtypeStruct(random_clips(architecture).shape, jnp.float32))
  assert out.shape == (2, feature_dim(architecture, SMALL_WIDTH)) == (2, features // 8)


# Full width: the files load into torchvision's own r3d_18() and s3d().

@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_full_width_export_loads_into_torchvision_strictly_except_the_classifier(
    architecture, tmp_path):
  out = str(tmp_path / f'vclr_{architecture}.pth')
  export_encoder(random_variables(architecture, 1.0, seed=1), out, 'torchvision',
                 metadata(architecture, 1.0))
  state = torch.load(out, weights_only=True)
  model = TORCHVISION_MODELS[architecture]()
  keys = model.load_state_dict(state, strict=False)  # still checks every shape
  assert keys.unexpected_keys == []
  assert keys.missing_keys == list(CLASSIFIER_SHAPES[architecture])
  # torchvision's key order too (scripts that pair keys by position work).
  assert list(state) == [k for k in model.state_dict()
                         if not k.startswith(CLASSIFIER_PREFIX[architecture])]
  torchvision_video_model(architecture).load_state_dict(state, strict=True)  # classifier gone
  with open(metadata_path(out)) as f:
    recorded = json.load(f)
  assert recorded['architecture'] == architecture and recorded['depth'] is None
  assert recorded['feature_dim'] == feature_dim(architecture)
  assert recorded['input_layout'] == 'NCTHW float32' and recorded['step'] == STEP


# Small width: features against torchvision's wiring, both directions.

@pytest.fixture(scope='module', params=ARCHITECTURES)
def small_export(request, tmp_path_factory):
  architecture = request.param
  variables = random_variables(architecture, SMALL_WIDTH, seed=2)
  out = str(tmp_path_factory.mktemp('export3d') / f'{architecture}.pth')
  frames, size = CLIPS[architecture]
  verification = export_and_verify(variables, out, 'torchvision',
                                   metadata(architecture, SMALL_WIDTH), image_size=size,
                                   num_frames=frames)
  return architecture, variables, out, verification


def test_exported_features_equal_torchvision(small_export):
  architecture, _, _, verification = small_export
  assert (verification.num_frames, verification.image_size) == CLIPS[architecture]
  assert verification.max_abs_feature > 0.1  # non-trivial features
  assert verification.max_abs_difference < FLOAT32_ATOL


@pytest.mark.parametrize('fmt', ['torchvision', 'safetensors'])
def test_import_round_trip_is_bit_exact(small_export, fmt, tmp_path):
  architecture, variables, out, _ = small_export
  if fmt == 'safetensors':
    out = str(tmp_path / 'encoder.safetensors')
    export_encoder(variables, out, fmt, metadata(architecture, SMALL_WIDTH))
  template = random_variables(architecture, SMALL_WIDTH, seed=3)
  assert_variables_equal(load_pytorch_variables(out, template), variables)


def test_import_of_a_torchvision_state_dict_gives_its_features(small_export, tmp_path, capsys):
  architecture = small_export[0]
  torch.manual_seed(0)
  model = torchvision_video_model(architecture, SMALL_WIDTH)
  with torch.no_grad():  # non-trivial BatchNorm, as after training
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm3d):
        module.weight.uniform_(0.8, 1.2)
        module.bias.normal_(0, 0.1)
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 2.0)
  # As torchvision saves it, with its Kinetics classifier.
  state = dict(model.state_dict(), **{name: torch.zeros(shape) for name, shape
                                      in CLASSIFIER_SHAPES[architecture].items()})
  path = str(tmp_path / f'torchvision_{architecture}.pth')
  torch.save(state, path)
  variables = load_pytorch_variables(path, random_variables(architecture, SMALL_WIDTH, seed=4))
  printed = capsys.readouterr().out
  assert 'Not in the file' not in printed and 'unexpected' not in printed
  assert 'torchvision classifier (2 keys' in printed
  clips = random_clips(architecture, seed=5)
  expected = torch_features(model, clips)
  assert np.abs(expected).max() > 0.1
  ours = backbone_features(video_backbone(architecture, SMALL_WIDTH), variables, clips)
  np.testing.assert_allclose(ours, expected, atol=FLOAT32_ATOL, rtol=FLOAT32_ATOL)


def test_wrong_shape_is_an_error_naming_the_key(small_export, tmp_path):
  architecture, _, out, _ = small_export
  key = {'r3d_18': 'layer2.0.conv1.0.weight', 's3d': 'features.5.branch1.1.0.0.weight'}[
      architecture]
  state = torch.load(out, weights_only=True)
  state[key] = torch.zeros(1, 1, 3, 3, 3)
  path = str(tmp_path / 'wrong.pth')
  torch.save(state, path)
  with pytest.raises(ValueError, match=rf"'{key}' has shape \(1, 1, 3, 3, 3\)"):
    load_pytorch_variables(path, random_variables(architecture, SMALL_WIDTH, seed=0))


def test_mmaction2_format_is_refused_for_3d_backbones(small_export, tmp_path):
  architecture, variables, _, _ = small_export
  with pytest.raises(ValueError, match=f'mmaction2 is for 2D ResNets; export the {architecture}'):
    export_encoder(variables, str(tmp_path / 'mm.pth'), 'mmaction2',
                   metadata(architecture, SMALL_WIDTH))


# Initialisation and BatchNorm.

def built_layers(architecture):
  """{flax module path: module} of every Conv and BatchNorm the full-width backbone builds,
  recorded during a shape-only init."""
  layers = {}

  def record(call, args, kwargs, context):
    if context.method_name == '__call__' and isinstance(context.module, (nn.Conv, BatchNorm)):
      layers[context.module.path] = context.module
    return call(*args, **kwargs)

  with nn.intercept_methods(record):
    variable_shapes.__wrapped__(architecture, 1.0)  # uncached, so that init runs
  return layers


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_every_conv_and_batchnorm_is_configured_as_torchvision(architecture):
  """Kernel, stride, padding and init of every conv, eps and momentum of every BatchNorm, each
  against the torchvision module of the same name."""
  torch_modules = dict(TORCHVISION_MODELS[architecture]().named_modules())
  layers = built_layers(architecture)
  kernel_init = {'r3d_18': conv_kernel_init, 's3d': torch_default_conv_init}[architecture]
  for path, layer in layers.items():
    leaf = 'kernel' if isinstance(layer, nn.Conv) else 'scale'
    name = torch_name(('params', 'backbone') + path + (leaf,))[:-len('.weight')]
    theirs = torch_modules[name]
    if isinstance(layer, nn.Conv):
      assert isinstance(theirs, torch.nn.Conv3d) and theirs.bias is None, name
      assert layer.kernel_init is kernel_init and not layer.use_bias, name
      assert (layer.kernel_size, layer.strides) == (theirs.kernel_size, theirs.stride), name
      assert layer.padding == tuple((p, p) for p in theirs.padding), name
    else:
      assert isinstance(theirs, torch.nn.BatchNorm3d), name
      assert (layer.epsilon, layer.momentum) == (theirs.eps, 1 - theirs.momentum), name
  torch_layers = [m for m in torch_modules.values()
                  if isinstance(m, (torch.nn.Conv3d, torch.nn.BatchNorm3d))]
  assert len(layers) == len(torch_layers) - (architecture == 's3d')  # s3d's classifier conv


def test_conv_initialisers_draw_torchvision_distributions():
  """r3d_18: kaiming_normal_(mode='fan_out'), untruncated; s3d: torch's default
  U(+-1/sqrt(fan_in)). One 3x3x3 64 -> 64 kernel each (110592 samples: the sample std is
  within 1% of the true one with overwhelming probability)."""
  shape = (3, 3, 3, 64, 64)
  kaiming = np.asarray(conv_kernel_init(jax.random.key(0), shape))
  std = np.sqrt(2 / (27 * 64))
  np.testing.assert_allclose(kaiming.std(), std, rtol=0.01)
  assert abs(kaiming.mean()) < 0.01 * std and np.abs(kaiming).max() > 3 * std  # not truncated
  uniform = np.asarray(torch_default_conv_init(jax.random.key(1), shape))
  bound = 1 / np.sqrt(27 * 64)
  assert bound >= np.abs(uniform).max() > 0.99 * bound
  np.testing.assert_allclose(uniform.std(), bound / np.sqrt(3), rtol=0.01)


def test_grouped_and_synchronised_batchnorm_over_clips_equals_numpy():
  """Training-mode BN over (N, T, H, W, C) with S3D's eps and momentum, two groups per device
  and two devices (vmap stands for the mapped 'data' axis), against numpy."""
  devices, groups, per_group, shape = 2, 2, 3, (2, 3, 3, 4)
  scale, bias = np.array([0.5, 1.0, 1.5, 2.0]), np.array([0.1, -0.2, 0.3, 0.0])
  with jax.enable_x64(True):  # float64, so the two computations can be compared to 1e-12
    x = jax.random.normal(jax.random.key(0), (devices, groups * per_group) + shape, jnp.float64)
    x = x * jnp.arange(1.0, 5.0) + jnp.arange(4.0)  # each channel its own moments
    bn = BatchNorm(groups=groups, axis_name='data', dtype=jnp.float64, **S3D_BN)
    variables = {'params': {'scale': scale, 'bias': bias},
                 'batch_stats': {'mean': np.full(4, 0.2), 'var': np.full(4, 1.5)}}
    apply = lambda x: bn.apply(variables, x, train=True, mutable=['batch_stats'])
    y, updated = jax.vmap(apply, axis_name='data')(x)
    x, y = np.asarray(x), np.asarray(y)
    updated = jax.tree.map(np.asarray, updated['batch_stats'])

  # Group g holds samples [g * per_group, (g + 1) * per_group) of every device.
  grouped = x.reshape((devices, groups, per_group) + shape)
  axes = (0, 2, 3, 4, 5)  # devices, samples, T, H, W: everything but the group and channel
  mean = grouped.mean(axis=axes, keepdims=True)
  var = ((grouped - mean)**2).mean(axis=axes, keepdims=True)
  expected = (grouped - mean) / np.sqrt(var + 1e-3) * scale + bias
  np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=1e-12, atol=1e-12)
  # torch's running update with momentum 0.001 and the unbiased variance, averaged over groups.
  n = devices * per_group * np.prod(shape[:-1])
  batch_mean = mean.reshape(groups, 4).mean(0)
  batch_var = (var.reshape(groups, 4) * n / (n - 1)).mean(0)
  for device in range(devices):  # every device ends with the same statistics
    np.testing.assert_allclose(updated['mean'][device], 0.999 * 0.2 + 0.001 * batch_mean,
                               rtol=1e-12)
    np.testing.assert_allclose(updated['var'][device], 0.999 * 1.5 + 0.001 * batch_var,
                               rtol=1e-12)


@pytest.mark.parametrize('kernel,stride,padding', [((3, 3, 3), (1, 1, 1), (1, 1, 1)),
                                                   ((3, 7, 7), (1, 2, 2), (1, 3, 3)),
                                                   ((1, 1, 1), (2, 2, 2), (0, 0, 0)),
                                                   ((3, 1, 1), (2, 1, 1), (1, 0, 0))])
def test_conv3d_as_2d_convs_equals_the_3d_convolution(kernel, stride, padding):
  # The CPU path must compute what accelerators compute with the 3D op.
  lhs = jax.random.normal(jax.random.key(0), (2, 5, 9, 11, 3))
  rhs = jax.random.normal(jax.random.key(1), tuple(kernel) + (3, 4))
  pads = tuple((p, p) for p in padding)
  expected = jax.lax.conv_general_dilated(lhs, rhs, stride, pads,
                                          dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
                                          precision='highest')
  got = conv3d_as_2d_convs(lhs, rhs, stride, pads, precision='highest')
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
