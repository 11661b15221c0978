"""pytorch-fid 0.3.0's `src/pytorch_fid/inception.py`: `fid_inception_v3()` (torchvision's
Inception3 with FIDInceptionA/C/E_1/E_2 swapped in) and the `InceptionV3` feature
extractor, re-typed without the weight download. State_dict keys are pytorch-fid's
(those of its pt_inception-2015-12-05 weights file)."""

import torch
import torch.nn.functional as F
from torch import nn

from scripts.torch_refs import torchvision_inception as tv


class InceptionV3(nn.Module):
  DEFAULT_BLOCK_INDEX = 3
  BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}

  def __init__(self, inception, output_blocks=(DEFAULT_BLOCK_INDEX,), resize_input=True, normalize_input=True):
    super().__init__()
    self.resize_input = resize_input
    self.normalize_input = normalize_input
    self.output_blocks = sorted(output_blocks)
    self.last_needed_block = max(output_blocks)
    self.blocks = nn.ModuleList()
    block0 = [
        inception.Conv2d_1a_3x3,
        inception.Conv2d_2a_3x3,
        inception.Conv2d_2b_3x3,
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]
    self.blocks.append(nn.Sequential(*block0))
    if self.last_needed_block >= 1:
      block1 = [inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)]
      self.blocks.append(nn.Sequential(*block1))
    if self.last_needed_block >= 2:
      block2 = [
          inception.Mixed_5b,
          inception.Mixed_5c,
          inception.Mixed_5d,
          inception.Mixed_6a,
          inception.Mixed_6b,
          inception.Mixed_6c,
          inception.Mixed_6d,
          inception.Mixed_6e,
      ]
      self.blocks.append(nn.Sequential(*block2))
    if self.last_needed_block >= 3:
      block3 = [inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))]
      self.blocks.append(nn.Sequential(*block3))

  def forward(self, inp):
    outp = []
    x = inp
    if self.resize_input:
      x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
    if self.normalize_input:
      x = 2 * x - 1  # Scale from range (0, 1) to range (-1, 1)
    for idx, block in enumerate(self.blocks):
      x = block(x)
      if idx in self.output_blocks:
        outp.append(x)
      if idx == self.last_needed_block:
        break
    return outp


def fid_inception_v3():
  inception = tv.Inception3(num_classes=1008, aux_logits=False)
  inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
  inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
  inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
  inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
  inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
  inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
  inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
  inception.Mixed_7b = FIDInceptionE_1(1280)
  inception.Mixed_7c = FIDInceptionE_2(2048)
  return inception


class FIDInceptionA(tv.InceptionA):

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch5x5 = self.branch5x5_1(x)
    branch5x5 = self.branch5x5_2(branch5x5)
    branch3x3dbl = self.branch3x3dbl_1(x)
    branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
    branch3x3dbl = self.branch3x3dbl_3(branch3x3dbl)
    # Patch: Tensorflow's average pool does not use the padded zero's in its average calculation
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(tv.InceptionC):

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch7x7 = self.branch7x7_1(x)
    branch7x7 = self.branch7x7_2(branch7x7)
    branch7x7 = self.branch7x7_3(branch7x7)
    branch7x7dbl = self.branch7x7dbl_1(x)
    branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
    branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
    # Patch: Tensorflow's average pool does not use the padded zero's in its average calculation
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class FIDInceptionE_1(tv.InceptionE):

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch3x3 = self.branch3x3_1(x)
    branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
    branch3x3dbl = self.branch3x3dbl_1(x)
    branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
    branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
    # Patch: Tensorflow's average pool does not use the padded zero's in its average calculation
    branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionE_2(tv.InceptionE):

  def forward(self, x):
    branch1x1 = self.branch1x1(x)
    branch3x3 = self.branch3x3_1(x)
    branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
    branch3x3dbl = self.branch3x3dbl_1(x)
    branch3x3dbl = self.branch3x3dbl_2(branch3x3dbl)
    branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
    # Patch: The FID Inception model uses max pooling instead of average
    # pooling. This is likely an error in this specific Inception
    # implementation, as other Inception models use average pooling here
    # (which matches the description in the paper).
    branch_pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
    branch_pool = self.branch_pool(branch_pool)
    return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)
