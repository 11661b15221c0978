"""torchvision 0.20's `torchvision/models/googlenet.py` (GoogLeNet, Inception, InceptionAux,
BasicConv2d), re-typed without the weights API, quantization hooks and scripting helpers.
Module names, and so state_dict keys, are torchvision's."""

import torch
import torch.nn.functional as F
from torch import nn


class GoogLeNet(nn.Module):

  def __init__(self, num_classes=1000, aux_logits=True, transform_input=False, dropout=0.2, dropout_aux=0.7):
    super().__init__()
    self.aux_logits = aux_logits
    self.transform_input = transform_input

    self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
    self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    self.conv2 = BasicConv2d(64, 64, kernel_size=1)
    self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
    self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

    self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
    self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
    self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

    self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
    self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
    self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
    self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
    self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
    self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

    self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
    self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

    if aux_logits:
      self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
      self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)
    else:
      self.aux1 = None
      self.aux2 = None

    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.dropout = nn.Dropout(p=dropout)
    self.fc = nn.Linear(1024, num_classes)

  def _transform_input(self, x):
    if self.transform_input:
      x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
      x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
      x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
      x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
    return x

  def _forward(self, x):
    x = self.conv1(x)
    x = self.maxpool1(x)
    x = self.conv2(x)
    x = self.conv3(x)
    x = self.maxpool2(x)
    x = self.inception3a(x)
    x = self.inception3b(x)
    x = self.maxpool3(x)
    x = self.inception4a(x)
    aux1 = None
    if self.aux1 is not None:
      if self.training:
        aux1 = self.aux1(x)
    x = self.inception4b(x)
    x = self.inception4c(x)
    x = self.inception4d(x)
    aux2 = None
    if self.aux2 is not None:
      if self.training:
        aux2 = self.aux2(x)
    x = self.inception4e(x)
    x = self.maxpool4(x)
    x = self.inception5a(x)
    x = self.inception5b(x)
    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    x = self.dropout(x)
    x = self.fc(x)
    return x, aux2, aux1

  def forward(self, x):
    x = self._transform_input(x)
    x, aux2, aux1 = self._forward(x)
    if self.training and self.aux_logits:
      return x, aux2, aux1  # torchvision's GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
    return x


class Inception(nn.Module):

  def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    super().__init__()
    self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
    self.branch2 = nn.Sequential(
        BasicConv2d(in_channels, ch3x3red, kernel_size=1), BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1)
    )
    self.branch3 = nn.Sequential(
        BasicConv2d(in_channels, ch5x5red, kernel_size=1),
        # Here, kernel_size=3 instead of kernel_size=5 is a known bug.
        # Please see https://github.com/pytorch/vision/issues/906 for details.
        BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
    )
    self.branch4 = nn.Sequential(
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
        BasicConv2d(in_channels, pool_proj, kernel_size=1),
    )

  def forward(self, x):
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):

  def __init__(self, in_channels, num_classes, dropout=0.7):
    super().__init__()
    self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
    self.fc1 = nn.Linear(2048, 1024)
    self.fc2 = nn.Linear(1024, num_classes)
    self.dropout = nn.Dropout(p=dropout)

  def forward(self, x):
    x = F.adaptive_avg_pool2d(x, (4, 4))
    x = self.conv(x)
    x = torch.flatten(x, 1)
    x = F.relu(self.fc1(x), inplace=True)
    x = self.dropout(x)
    x = self.fc2(x)
    return x


class BasicConv2d(nn.Module):

  def __init__(self, in_channels, out_channels, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

  def forward(self, x):
    x = self.conv(x)
    x = self.bn(x)
    return F.relu(x, inplace=True)
