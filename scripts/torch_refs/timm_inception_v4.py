"""timm's InceptionV4, module for module (huggingface/pytorch-image-models,
timm/models/inception_v4.py at commit 0085149, timm 1.0.x).

timm builds every conv as `ConvNormAct(padding=0, norm_eps=1e-3)`, whose submodules are
`conv` (no bias) and `bn` (BatchNorm2d, eps 1e-3, with the ReLU inside); `BasicConv2d`
below has the same two submodules, hence the same state_dict keys (`features.5.branch1.0.conv.weight`).
The head is timm's `create_classifier`: a global pool ('avg', 'max', 'avgmax'), dropout,
`last_linear` (nn.Identity when num_classes=0).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicConv2d(nn.Module):

  def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(out_planes, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def global_pool(x, pool_type):
  """timm's SelectAdaptivePool2d(flatten=True) for the pool types we port."""
  if pool_type == 'avg':
    return F.adaptive_avg_pool2d(x, 1).flatten(1)
  if pool_type == 'max':
    return F.adaptive_max_pool2d(x, 1).flatten(1)
  if pool_type == 'avgmax':
    return 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)).flatten(1)
  raise ValueError(pool_type)


class Mixed3a(nn.Module):

  def __init__(self):
    super().__init__()
    self.maxpool = nn.MaxPool2d(3, stride=2)
    self.conv = BasicConv2d(64, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat((self.maxpool(x), self.conv(x)), 1)


class Mixed4a(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = nn.Sequential(BasicConv2d(160, 64, 1), BasicConv2d(64, 96, 3))
    self.branch1 = nn.Sequential(
        BasicConv2d(160, 64, 1),
        BasicConv2d(64, 64, (1, 7), padding=(0, 3)),
        BasicConv2d(64, 64, (7, 1), padding=(3, 0)),
        BasicConv2d(64, 96, (3, 3)),
    )

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x)), 1)


class Mixed5a(nn.Module):

  def __init__(self):
    super().__init__()
    self.conv = BasicConv2d(192, 192, kernel_size=3, stride=2)
    self.maxpool = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.conv(x), self.maxpool(x)), 1)


class InceptionA(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(384, 96, 1)
    self.branch1 = nn.Sequential(BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1))
    self.branch2 = nn.Sequential(
        BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
    )
    self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), BasicConv2d(384, 96, 1))

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionA(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(384, 384, 3, stride=2)
    self.branch1 = nn.Sequential(
        BasicConv2d(384, 192, 1), BasicConv2d(192, 224, 3, padding=1), BasicConv2d(224, 256, 3, stride=2)
    )
    self.branch2 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class InceptionB(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(1024, 384, 1)
    self.branch1 = nn.Sequential(
        BasicConv2d(1024, 192, 1),
        BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
        BasicConv2d(224, 256, (7, 1), padding=(3, 0)),
    )
    self.branch2 = nn.Sequential(
        BasicConv2d(1024, 192, 1),
        BasicConv2d(192, 192, (7, 1), padding=(3, 0)),
        BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
        BasicConv2d(224, 224, (7, 1), padding=(3, 0)),
        BasicConv2d(224, 256, (1, 7), padding=(0, 3)),
    )
    self.branch3 = nn.Sequential(
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), BasicConv2d(1024, 128, 1)
    )

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class ReductionB(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = nn.Sequential(BasicConv2d(1024, 192, 1), BasicConv2d(192, 192, 3, stride=2))
    self.branch1 = nn.Sequential(
        BasicConv2d(1024, 256, 1),
        BasicConv2d(256, 256, (1, 7), padding=(0, 3)),
        BasicConv2d(256, 320, (7, 1), padding=(3, 0)),
        BasicConv2d(320, 320, 3, stride=2),
    )
    self.branch2 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class InceptionC(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(1536, 256, 1)
    self.branch1_0 = BasicConv2d(1536, 384, 1)
    self.branch1_1a = BasicConv2d(384, 256, (1, 3), padding=(0, 1))
    self.branch1_1b = BasicConv2d(384, 256, (3, 1), padding=(1, 0))
    self.branch2_0 = BasicConv2d(1536, 384, 1)
    self.branch2_1 = BasicConv2d(384, 448, (3, 1), padding=(1, 0))
    self.branch2_2 = BasicConv2d(448, 512, (1, 3), padding=(0, 1))
    self.branch2_3a = BasicConv2d(512, 256, (1, 3), padding=(0, 1))
    self.branch2_3b = BasicConv2d(512, 256, (3, 1), padding=(1, 0))
    self.branch3 = nn.Sequential(
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), BasicConv2d(1536, 256, 1)
    )

  def forward(self, x):
    x0 = self.branch0(x)
    x1_0 = self.branch1_0(x)
    x1 = torch.cat((self.branch1_1a(x1_0), self.branch1_1b(x1_0)), 1)
    x2_2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
    x2 = torch.cat((self.branch2_3a(x2_2), self.branch2_3b(x2_2)), 1)
    return torch.cat((x0, x1, x2, self.branch3(x)), 1)


class InceptionV4(nn.Module):

  def __init__(self, num_classes=1000, in_chans=3, drop_rate=0.0, global_pool='avg'):
    super().__init__()
    self.global_pool = global_pool
    features = [
        BasicConv2d(in_chans, 32, 3, stride=2),
        BasicConv2d(32, 32, 3),
        BasicConv2d(32, 64, 3, padding=1),
        Mixed3a(),
        Mixed4a(),
        Mixed5a(),
    ]
    features += [InceptionA() for _ in range(4)]
    features += [ReductionA()]
    features += [InceptionB() for _ in range(7)]
    features += [ReductionB()]
    features += [InceptionC() for _ in range(3)]
    self.features = nn.Sequential(*features)
    self.head_drop = nn.Dropout(drop_rate)
    self.last_linear = nn.Linear(1536, num_classes) if num_classes > 0 else nn.Identity()

  def forward(self, x):
    x = global_pool(self.features(x), self.global_pool)
    return self.last_linear(self.head_drop(x))
