"""Published figures of the accelerator chips vclr_jax.plan estimates for.

One table: dense peak FLOP/s, HBM capacity and bandwidth, and the interconnect bandwidth
of one chip, each row with its source. The plan's roofline (an estimate, not a measurement)
and its HBM headroom read them from here.
"""

from __future__ import annotations

import dataclasses

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  # Dense (no sparsity) TFLOP/s by compute dtype: float32 is what XLA runs by default
  # (TF32 tensor cores on NVIDIA, bfloat16 passes on TPU).
  peak_tflops: dict[str, float]
  hbm_gb: float  # capacity, 1e9 bytes (the vendor's figure; GiB figures converted)
  hbm_gb_per_s: float
  # Interconnect inside a slice or node, both directions together, per chip (TPU ICI, NVLink).
  ici_gb_per_s: float
  # Between slices or nodes (data-centre network, InfiniBand), per chip; None: not published.
  dcn_gb_per_s: float | None
  source: str
  # What jax.Device.device_kind says on this chip, or the part of it that names it.
  device_kind: str = ''

  def peak_flops(self, compute_dtype: str) -> float | None:
    tflops = self.peak_tflops.get(compute_dtype)
    return None if tflops is None else tflops * 1e12


GIB = 2**30 / GB
CHIPS = {
    'v4': Chip('TPU v4', {'bfloat16': 275.0, 'float32': 275.0}, 32 * GIB, 1200.0,
               # six ICI ports of 50 GB/s each way (400 Gbps per direction per port)
               600.0, None,
               'https://cloud.google.com/tpu/docs/v4 ; ICI: Jouppi et al., "TPU v4", ISCA 2023',
               'TPU v4'),
    'v5e': Chip('TPU v5 lite', {'bfloat16': 197.0, 'float32': 197.0}, 16.0, 819.0, 400.0,
                # 2 x 100 Gbps NICs per host of 8 chips
                200 / 8 / 8, 'https://cloud.google.com/tpu/docs/v5e', 'TPU v5 lite'),
    'v5p': Chip('TPU v5', {'bfloat16': 459.0, 'float32': 459.0}, 95.0, 2765.0, 1200.0,
                50 / 8, 'https://cloud.google.com/tpu/docs/v5p', 'TPU v5'),
    'v6e': Chip('TPU v6 lite', {'bfloat16': 918.0, 'float32': 918.0}, 32.0, 1638.0, 800.0,
                None, 'https://cloud.google.com/tpu/docs/v6e', 'TPU v6 lite'),
    'h100': Chip('NVIDIA H100 SXM', {'bfloat16': 989.0, 'float32': 494.7}, 80.0, 3350.0, 900.0,
                 # one 400 Gb/s InfiniBand NIC per GPU
                 400 / 8, 'https://www.nvidia.com/en-us/data-center/h100/ (SXM5 column)',
                 'H100'),
    'h200': Chip('NVIDIA H200 SXM', {'bfloat16': 989.0, 'float32': 494.7}, 141.0, 4800.0, 900.0,
                 400 / 8, 'https://www.nvidia.com/en-us/data-center/h200/ (SXM column)',
                 'H200'),
    'a100': Chip('NVIDIA A100 SXM 80GB', {'bfloat16': 312.0, 'float32': 156.0}, 80.0, 2039.0,
                 600.0, 200 / 8, 'https://www.nvidia.com/en-us/data-center/a100/ (SXM column)',
                 'A100'),
    # cpu:N is a quick check of the plan itself: no chip figures, no estimate.
}


def chip_of_device_kind(device_kind: str) -> Chip | None:
  """The table's chip whose name is part of ``device_kind`` (the longest, so that 'TPU v5 lite'
  is not taken for 'TPU v5'); None for a chip the table lacks."""
  matches = [chip for chip in CHIPS.values()
             if chip.device_kind and chip.device_kind.lower() in device_kind.lower()]
  return max(matches, key=lambda chip: len(chip.device_kind), default=None)
