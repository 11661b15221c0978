"""PyTorch reference networks for the parity tests and the benchmarks (torch is never a library
dependency: it comes with the test extra).

torchvision and pytorch-fid cannot be installed beside this machine's torch, so these files
re-type their published module structure and forward passes, keeping every module name and
so every state_dict key. The version each follows is named at its top. benchmark_nets.py
holds the PyTorch twins of our own networks that `scripts.benchmark --compare_torch` times.
"""

import torch


def randomize(module: torch.nn.Module, calibration_input: torch.Tensor, seed: int = 0) -> torch.nn.Module:
  """Random weights and non-trivial BatchNorm statistics, then eval mode.

  BatchNorm scales and shifts are drawn at random; the running statistics are those of
  one training-mode pass over `calibration_input` (momentum 1), so they differ per channel
  and keep activations near unit scale through the whole network.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
        m.momentum = 1.0
    module.train()
    module(calibration_input)
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 0.1
  return module.eval()


def numpy_state_dict(module: torch.nn.Module) -> dict:
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def nchw(x_nhwc):
  """A float32 torch tensor in NCHW from an NHWC array."""
  import numpy as np

  return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2)))
