"""timm's InceptionResnetV2, module for module (huggingface/pytorch-image-models,
timm/models/inception_resnet_v2.py at commit 84178fc, timm 0.9.x; its state_dict keys are
those of the `inception_resnet_v2.tf_in1k` weights: `conv2d_1a.conv.weight`,
`repeat.3.branch1.0.bn.running_var`, `repeat_2.8.conv2d.bias`, `block8.*`, `classif.*`).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .timm_inception_v4 import BasicConv2d, global_pool


class Mixed_5b(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(192, 96, 1)
    self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2))
    self.branch2 = nn.Sequential(
        BasicConv2d(192, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
    )
    self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), BasicConv2d(192, 64, 1))

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block35(nn.Module):

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(320, 32, 1)
    self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1))
    self.branch2 = nn.Sequential(
        BasicConv2d(320, 32, 1), BasicConv2d(32, 48, 3, padding=1), BasicConv2d(48, 64, 3, padding=1)
    )
    self.conv2d = nn.Conv2d(128, 320, kernel_size=1, stride=1)

  def forward(self, x):
    out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1))
    return F.relu(out * self.scale + x)


class Mixed_6a(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(320, 384, 3, stride=2)
    self.branch1 = nn.Sequential(
        BasicConv2d(320, 256, 1), BasicConv2d(256, 256, 3, padding=1), BasicConv2d(256, 384, 3, stride=2)
    )
    self.branch2 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Block17(nn.Module):

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(1088, 192, 1)
    self.branch1 = nn.Sequential(
        BasicConv2d(1088, 128, 1),
        BasicConv2d(128, 160, (1, 7), padding=(0, 3)),
        BasicConv2d(160, 192, (7, 1), padding=(3, 0)),
    )
    self.conv2d = nn.Conv2d(384, 1088, kernel_size=1, stride=1)

  def forward(self, x):
    out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
    return F.relu(out * self.scale + x)


class Mixed_7a(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2))
    self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2))
    self.branch2 = nn.Sequential(
        BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, padding=1), BasicConv2d(288, 320, 3, stride=2)
    )
    self.branch3 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block8(nn.Module):

  def __init__(self, scale=1.0, no_relu=False):
    super().__init__()
    self.scale = scale
    self.no_relu = no_relu
    self.branch0 = BasicConv2d(2080, 192, 1)
    self.branch1 = nn.Sequential(
        BasicConv2d(2080, 192, 1),
        BasicConv2d(192, 224, (1, 3), padding=(0, 1)),
        BasicConv2d(224, 256, (3, 1), padding=(1, 0)),
    )
    self.conv2d = nn.Conv2d(448, 2080, kernel_size=1, stride=1)

  def forward(self, x):
    out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1)) * self.scale + x
    return out if self.no_relu else F.relu(out)


class InceptionResnetV2(nn.Module):

  def __init__(self, num_classes=1000, in_chans=3, drop_rate=0.0, global_pool='avg'):
    super().__init__()
    self.global_pool = global_pool
    self.drop_rate = drop_rate
    self.conv2d_1a = BasicConv2d(in_chans, 32, 3, stride=2)
    self.conv2d_2a = BasicConv2d(32, 32, 3)
    self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
    self.maxpool_3a = nn.MaxPool2d(3, stride=2)
    self.conv2d_3b = BasicConv2d(64, 80, 1)
    self.conv2d_4a = BasicConv2d(80, 192, 3)
    self.maxpool_5a = nn.MaxPool2d(3, stride=2)
    self.mixed_5b = Mixed_5b()
    self.repeat = nn.Sequential(*[Block35(scale=0.17) for _ in range(10)])
    self.mixed_6a = Mixed_6a()
    self.repeat_1 = nn.Sequential(*[Block17(scale=0.10) for _ in range(20)])
    self.mixed_7a = Mixed_7a()
    self.repeat_2 = nn.Sequential(*[Block8(scale=0.20) for _ in range(9)])
    self.block8 = Block8(no_relu=True)
    self.conv2d_7b = BasicConv2d(2080, 1536, 1)
    self.classif = nn.Linear(1536, num_classes) if num_classes > 0 else nn.Identity()

  def forward(self, x):
    for name in (
        'conv2d_1a',
        'conv2d_2a',
        'conv2d_2b',
        'maxpool_3a',
        'conv2d_3b',
        'conv2d_4a',
        'maxpool_5a',
        'mixed_5b',
        'repeat',
        'mixed_6a',
        'repeat_1',
        'mixed_7a',
        'repeat_2',
        'block8',
        'conv2d_7b',
    ):
      x = getattr(self, name)(x)
    x = global_pool(x, self.global_pool)
    x = F.dropout(x, p=self.drop_rate, training=self.training)
    return self.classif(x)
