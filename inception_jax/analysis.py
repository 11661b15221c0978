"""Parameters and multiply-adds per layer, read off the model itself.

The model is traced once (shapes only, nothing is computed) and every convolution and
matrix multiply in its jaxpr is charged to the Flax module that issued it:

    conv:  multiply-adds = output elements x kernel height x kernel width x input channels / groups
    dense: multiply-adds = output elements x contracted size

which is the arithmetic of seed 000 (5^2 x 28^2 x 192 x 32 = 120,422,400 for GoogLeNet's
naive 5x5 tower in inception (3a)). Additions of biases, normalization, activations and
pooling are not counted, as in the papers' and timm's figures.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class Layer:
  name: str  # the module path, e.g. 'inception1/branch5x5/conv'
  output_shape: tuple[int, ...]  # per example
  params: int
  macs: int  # multiply-adds per example


def _macs(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  if eqn.primitive.name == 'conv_general_dilated':
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params['dimension_numbers'].rhs_spec  # (out, in, spatial...)
    # The kernel's input dimension is already input channels / groups.
    return int(np.prod(out)) * rhs[spec[1]] * int(np.prod([rhs[d] for d in spec[2:]]))
  if eqn.primitive.name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return int(np.prod(out)) * int(np.prod([lhs[d] for d in lhs_contract]))
  return 0


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def _walk(jaxpr, prefix: str, visit) -> None:
  for eqn in jaxpr.eqns:
    scope = str(eqn.source_info.name_stack)
    scope = f'{prefix}/{scope}' if prefix and scope else (prefix or scope)
    subs = list(_sub_jaxprs(eqn))
    if subs:
      # Custom gradients and calls nest their forward computation: count it once, there.
      _walk(subs[0], scope, visit)
    else:
      visit(scope, eqn)


def count(model: Any, input_shape: tuple[int, ...], **apply_kwargs) -> list[Layer]:
  """Layers of `model` applied to one example of `input_shape` (H, W, C), in call order."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, **apply_kwargs), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, **apply_kwargs))(variables, x).jaxpr

  root = type(model).__name__
  params = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables.get('params', {})))
  modules = {'/'.join(path[:-1]) for path in params}
  layers: dict[str, Layer] = {}

  def layer(name: str) -> Layer:
    return layers.setdefault(name, Layer(name, (), 0, 0))

  def owner(scope: str) -> str:
    # The innermost module with parameters that encloses the operation (an einsum or a
    # custom gradient may add scopes of its own below it).
    parts = scope.removeprefix(root).strip('/').split('/')
    for end in range(len(parts), 0, -1):
      if '/'.join(parts[:end]) in modules:
        return '/'.join(parts[:end])
    return '/'.join(parts[:-1])

  last_shape: dict[str, tuple[int, ...]] = {}  # a layer's output: its last operation's

  def visit(scope: str, eqn) -> None:
    name = owner(f'{scope}/{eqn.primitive.name}')
    if eqn.outvars:
      last_shape[name] = tuple(eqn.outvars[0].aval.shape[1:])
    macs = _macs(eqn)
    if macs:
      layer(name).macs += macs

  _walk(jaxpr, '', visit)
  for path, leaf in params.items():
    layer('/'.join(path[:-1])).params += int(np.prod(leaf.shape))
  for entry in layers.values():
    entry.output_shape = last_shape.get(entry.name, ())
  return list(layers.values())


def format_table(layers: list[Layer]) -> str:
  width = max([len(l.name) for l in layers] + [5])
  lines = [f'{"layer":<{width}}  {"output":>16}  {"params":>13}  {"mult-adds":>15}']
  for l in layers:
    shape = 'x'.join(map(str, l.output_shape)) if l.output_shape else '-'
    lines.append(f'{l.name:<{width}}  {shape:>16}  {l.params:>13,}  {l.macs:>15,}')
  lines.append(
      f'{"total":<{width}}  {"":>16}  {sum(l.params for l in layers):>13,}  {sum(l.macs for l in layers):>15,}'
  )
  return '\n'.join(lines)
