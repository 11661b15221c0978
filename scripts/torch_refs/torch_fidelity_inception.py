"""torch-fidelity 0.4.0's 'inception-v3-compat' feature extractor
(`torch_fidelity/feature_extractor_inceptionv3.py`, `FeatureExtractorInceptionV3.forward`), re-typed
on pytorch-fid's network: both are the 2015-12-05 TensorFlow graph layer for layer (torch-fidelity
names its modules as pytorch-fid does, `utils/util_convert_inception_weights.py`), so only the
preprocessing differs, and that is what this file restates:

- forward L103-104: uint8 Bx3xHxW only; L108: to float32; L111-115: TensorFlow 1's bilinear resize
  to 299 (`interpolate_compat_tensorflow.py` L83-93, the scale with align_corners=False, and L115-138, `resample_manually`);
  L119: (x - 128) / 128;
- '2048': the pool3 features (L179-186); 'logits_unbiased': pool3 times the fc weight, no bias (L192-194).
"""

import torch

from scripts.torch_refs import pytorch_fid_inception as fid_ref


def resize_bilinear_tf1(input, out_size):
  """interpolate_compat_tensorflow.py L83-93 (the scale, align_corners=False) and L115-138 (resample_manually)."""
  scale_x = input.shape[3] / out_size[1]
  scale_y = input.shape[2] / out_size[0]
  grid_x = torch.arange(0, out_size[1], 1, dtype=input.dtype, device=input.device)
  grid_x = grid_x * torch.tensor(scale_x, dtype=torch.float32)
  grid_x_lo = grid_x.long()
  grid_x_hi = (grid_x_lo + 1).clamp_max(input.shape[3] - 1)
  grid_dx = grid_x - grid_x_lo.float()

  grid_y = torch.arange(0, out_size[0], 1, dtype=input.dtype, device=input.device)
  grid_y = grid_y * torch.tensor(scale_y, dtype=torch.float32)
  grid_y_lo = grid_y.long()
  grid_y_hi = (grid_y_lo + 1).clamp_max(input.shape[2] - 1)
  grid_dy = grid_y - grid_y_lo.float()

  in_00 = input[:, :, grid_y_lo, :][:, :, :, grid_x_lo]
  in_01 = input[:, :, grid_y_lo, :][:, :, :, grid_x_hi]
  in_10 = input[:, :, grid_y_hi, :][:, :, :, grid_x_lo]
  in_11 = input[:, :, grid_y_hi, :][:, :, :, grid_x_hi]

  in_0 = in_00 + (in_01 - in_00) * grid_dx.view(1, 1, 1, out_size[1])
  in_1 = in_10 + (in_11 - in_10) * grid_dx.view(1, 1, 1, out_size[1])
  return in_0 + (in_1 - in_0) * grid_dy.view(1, 1, out_size[0], 1)


class FeatureExtractorInceptionV3(torch.nn.Module):
  """`forward(x)`: uint8 Bx3xHxW -> {'2048': pool3, 'logits_unbiased': pool3 @ fc.weight.T}."""

  INPUT_IMAGE_SIZE = 299

  def __init__(self, network):
    super().__init__()
    self.network = network
    self.trunk = fid_ref.InceptionV3(network, output_blocks=(3,), resize_input=False, normalize_input=False)

  def forward(self, x):
    assert torch.is_tensor(x) and x.dtype == torch.uint8, 'Expecting image as torch.Tensor with dtype=torch.uint8'
    assert x.dim() == 4 and x.shape[1] == 3, f'Input is not Bx3xHxW: {x.shape}'
    x = x.to(torch.float32)
    x = resize_bilinear_tf1(x, (self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE))
    x = (x - 128) / 128
    pool3 = torch.flatten(self.trunk(x)[0], 1)
    return {'2048': pool3, 'logits_unbiased': pool3.mm(self.network.fc.weight.T)}
