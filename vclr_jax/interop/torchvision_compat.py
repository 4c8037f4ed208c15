"""Import torchvision where its compiled detection ops cannot load (CPU-only torch).

torchvision 0.28's PyPI wheel registers fake (meta) kernels for ``torchvision::nms`` and
``torchvision::qnms`` at import time; when its C++ extension fails to load (as with a CPU-only
torch build) those operators were never defined and ``import torchvision`` raises
"operator torchvision::nms does not exist". Defining the two schemas first lets the import
finish. Nothing here runs NMS: the ResNet models that interop needs are pure torch.nn.

Used only by export verification and the interop tests; the trainer never imports torch.
"""

from __future__ import annotations

# Schemas as torchvision's C++ extension declares them.
_MISSING_OP_SCHEMAS = {
    'nms': 'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms': 'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
}
# The Library object must stay alive for its definitions to remain registered.
_shim_library = None


def import_torchvision():
  """Returns the ``torchvision`` module, defining the op schemas its import needs if absent."""
  global _shim_library
  import torch

  missing = [name for name in _MISSING_OP_SCHEMAS if not hasattr(torch.ops.torchvision, name)]
  if missing and _shim_library is None:
    _shim_library = torch.library.Library('torchvision', 'FRAGMENT')
    for name in missing:
      _shim_library.define(_MISSING_OP_SCHEMAS[name])
  import torchvision
  return torchvision
