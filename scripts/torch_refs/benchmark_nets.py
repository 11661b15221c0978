"""PyTorch eager equivalents of our networks, for `scripts.benchmark --compare_torch` and
the tests that check them (torch is never a library dependency).

- `MnistInception`: seed 000's network as `inception_jax.models.mnist` builds it, with our
  module names (`inception1.branch5x5_reduce.conv`, `fc1`), so `convert.torch_to_flax` maps
  its state_dict; only fc1's input order differs: torch flattens CHW, we flatten HWC
  (`fc1_weight_to_hwc`).
- `PaperGoogLeNet`: our `googlenet` (layout='paper', seed 002): torchvision's modules and
  names (torchvision_googlenet.py) with true 5x5 kernels, the seed's stem (3x3 conv2, no
  1x1 before it), 3x3/2 max pools with padding 1 rounding down, and the paper's 5x5/3
  average pool before the aux heads' adaptive one. Its state_dict maps with
  `convert.GOOGLENET_TORCHVISION_RENAMES`.

`build(name, model)` gives the torch network for one of our model instances;
`train_step` and `eval_step` are torch's versions of `inception_jax.train`'s.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scripts.torch_refs import torchvision_googlenet as tv


class ConvBlock(nn.Module):
  """Our `ConvBlock` without a norm: a biased 'SAME' convolution, then ReLU if `relu`."""

  def __init__(self, in_channels, out_channels, kernel_size, relu):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    self.relu = relu

  def forward(self, x):
    x = self.conv(x)
    return F.relu(x) if self.relu else x


class MnistInceptionBlock(nn.Module):
  """`InceptionBlock(w, r, w, r, w, w, relu_after_concat=True)`: ReLU after the reductions
  and after the concatenation only."""

  def __init__(self, in_channels, width, reduce_width):
    super().__init__()
    self.branch1x1 = ConvBlock(in_channels, width, 1, relu=False)
    self.branch3x3_reduce = ConvBlock(in_channels, reduce_width, 1, relu=True)
    self.branch3x3 = ConvBlock(reduce_width, width, 3, relu=False)
    self.branch5x5_reduce = ConvBlock(in_channels, reduce_width, 1, relu=True)
    self.branch5x5 = ConvBlock(reduce_width, width, 5, relu=False)
    self.pool = nn.MaxPool2d(3, stride=1, padding=1)
    self.branch_pool = ConvBlock(in_channels, width, 1, relu=False)

  def forward(self, x):
    branches = [
        self.branch1x1(x),
        self.branch3x3(self.branch3x3_reduce(x)),
        self.branch5x5(self.branch5x5_reduce(x)),
        self.branch_pool(self.pool(x)),
    ]
    return F.relu(torch.cat(branches, 1))


class MnistInception(nn.Module):

  def __init__(
      self,
      num_classes=10,
      widths=(32, 64),
      reduce_width=16,
      hidden_units=700,
      drop_rate=0.5,
      image_size=28,
      in_channels=1,
  ):
    super().__init__()
    channels = in_channels
    for i, width in enumerate(widths, start=1):
      setattr(self, f'inception{i}', MnistInceptionBlock(channels, width, reduce_width))
      channels = 4 * width
    self.num_blocks = len(widths)
    self.fc1 = nn.Linear(image_size * image_size * channels, hidden_units)
    self.dropout = nn.Dropout(drop_rate)
    self.fc2 = nn.Linear(hidden_units, num_classes)

  def forward(self, x):
    for i in range(1, self.num_blocks + 1):
      x = getattr(self, f'inception{i}')(x)
    x = F.relu(self.fc1(torch.flatten(x, 1)))  # CHW order
    return self.fc2(self.dropout(x))


def fc1_weight_to_hwc(weight, channels: int, size: int) -> np.ndarray:
  """fc1's (out, C*H*W) torch weight with its columns in our HWC flatten order."""
  weight = np.asarray(weight)
  return weight.reshape(-1, channels, size, size).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


class PaperInception(tv.Inception):
  """torchvision's block with the paper's 5x5 kernel in the third tower."""

  def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    super().__init__(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)
    self.branch3[1] = tv.BasicConv2d(ch5x5red, ch5x5, kernel_size=5, padding=2)


class PaperInceptionAux(tv.InceptionAux):
  """torchvision's head after the paper's 5x5/3 average pool (its window clipped to small maps)."""

  def forward(self, x):
    x = F.avg_pool2d(x, (min(5, x.shape[2]), min(5, x.shape[3])), stride=3)
    return super().forward(x)


class PaperGoogLeNet(nn.Module):
  """Returns (logits, aux1, aux2) in training with aux heads, else logits: our evaluation
  step never reads the aux logits, so XLA drops their computation there too."""

  def __init__(self, num_classes=1000, aux_logits=True, drop_rate=0.4, aux_drop_rate=0.7):
    super().__init__()
    self.aux_logits = aux_logits
    self.conv1 = tv.BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
    self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
    self.conv2 = tv.BasicConv2d(64, 192, kernel_size=3, padding=1)
    self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
    self.inception3a = PaperInception(192, 64, 96, 128, 16, 32, 32)
    self.inception3b = PaperInception(256, 128, 128, 192, 32, 96, 64)
    self.maxpool3 = nn.MaxPool2d(3, stride=2, padding=1)
    self.inception4a = PaperInception(480, 192, 96, 208, 16, 48, 64)
    self.inception4b = PaperInception(512, 160, 112, 224, 24, 64, 64)
    self.inception4c = PaperInception(512, 128, 128, 256, 24, 64, 64)
    self.inception4d = PaperInception(512, 112, 144, 288, 32, 64, 64)
    self.inception4e = PaperInception(528, 256, 160, 320, 32, 128, 128)
    self.maxpool4 = nn.MaxPool2d(3, stride=2, padding=1)
    self.inception5a = PaperInception(832, 256, 160, 320, 32, 128, 128)
    self.inception5b = PaperInception(832, 384, 192, 384, 48, 128, 128)
    if aux_logits:
      self.aux1 = PaperInceptionAux(512, num_classes, dropout=aux_drop_rate)
      self.aux2 = PaperInceptionAux(528, num_classes, dropout=aux_drop_rate)
    self.dropout = nn.Dropout(drop_rate)
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x, with_aux=None):
    with_aux = self.training and self.aux_logits if with_aux is None else with_aux
    x = self.maxpool1(self.conv1(x))  # 56x56x64
    x = self.maxpool2(self.conv2(x))  # 28x28x192
    x = self.maxpool3(self.inception3b(self.inception3a(x)))  # 14x14x480
    x = self.inception4a(x)
    aux1 = self.aux1(x) if with_aux else None
    x = self.inception4d(self.inception4c(self.inception4b(x)))
    aux2 = self.aux2(x) if with_aux else None
    x = self.maxpool4(self.inception4e(x))  # 7x7x832
    x = self.inception5b(self.inception5a(x))  # 7x7x1024
    x = self.fc(self.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
    return (x, aux1, aux2) if with_aux else x


def _check_fields(name, model, **expected):
  differ = {k: getattr(model, k) for k, v in expected.items() if getattr(model, k) != v}
  if differ:
    raise NotImplementedError(f'No torch equivalent of {name!r} with {differ}; it is built for {expected}.')


def build(name: str, model) -> nn.Module:
  """The torch network equivalent to `model`, an instance of our registered model `name`."""
  if name == 'mnist_inception':
    return MnistInception(
        model.num_classes,
        tuple(model.widths),
        model.reduce_width,
        model.hidden_units,
        model.drop_rate,
        model.image_size,
        model.in_channels,
    )
  if name == 'googlenet':
    _check_fields(
        name,
        model,
        layout='paper',
        use_batchnorm=True,
        stem_reduce=None,
        transform_input=False,
        global_pool='avg',
        in_channels=3,
    )
    return PaperGoogLeNet(model.num_classes, model.aux_logits, model.drop_rate, model.aux_drop_rate)
  if name == 'googlenet_torchvision':
    _check_fields(
        name, model, layout='torchvision', use_batchnorm=True, stem_reduce=None, global_pool='avg', in_channels=3
    )
    return tv.GoogLeNet(
        model.num_classes, model.aux_logits, model.transform_input, model.drop_rate, model.aux_drop_rate
    )
  raise NotImplementedError(
      f'No torch equivalent of {name!r} for the benchmark; known: googlenet, googlenet_torchvision, mnist_inception.'
  )


def param_count(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def _autocast(dtype: str):
  if dtype == 'float32':
    return contextlib.nullcontext()
  return torch.autocast('cpu', dtype=getattr(torch, dtype))


def train_step(
    model: nn.Module, images, labels, *, aux_loss_weight: float, learning_rate: float = 1e-3, dtype: str = 'float32'
):
  """A function running one Adam step (torch's defaults, our betas and eps) on the batch,
  with the aux heads' losses weighted as `train.train_step` weighs them."""
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)
  model.train()

  def step():
    with _autocast(dtype):
      outputs = model(images)
    logits, *aux = outputs if isinstance(outputs, tuple) else (outputs,)
    loss = F.cross_entropy(logits.float(), labels)
    for aux_logits in aux:
      if aux_logits is not None and aux_loss_weight:
        loss = loss + aux_loss_weight * F.cross_entropy(aux_logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def eval_step(model: nn.Module, images, labels, *, dtype: str = 'float32'):
  """A function computing `train.eval_step`'s sums in eval mode under `torch.inference_mode`."""
  model.eval()

  def step():
    with torch.inference_mode(), _autocast(dtype):
      logits = model(images).float()
      return F.cross_entropy(logits, labels, reduction='sum'), (logits.argmax(-1) == labels).sum()

  return step
