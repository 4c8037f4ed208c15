"""PyTorch interop: export the encoder to torchvision / mmaction2 / safetensors, and start
from torchvision, MoCo, reference VCLR or mmaction2 weights. See docs/interop.md.

Importing this package does not import torch; only reading .pth files and export
verification do.
"""

from vclr_jax.interop.loading import load_pytorch_variables

__all__ = ['load_pytorch_variables']
