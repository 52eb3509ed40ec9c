"""Op strings shared by the host (TF) and device (JAX) preprocessing: `'op1|op2(arg, key=value)|...'`.

Each op is a registered factory called with the literal arguments; the parser knows nothing of TF or JAX, so both
preprocessing modules build on it and a spec reads the same in either place.
"""
import ast
from typing import Any, Callable

from vision_models.errors import ConfigError


def _parse_one(text: str, what: str) -> tuple[str, tuple, dict]:
  usage = f'cannot parse {what} {text!r}; write it as name or name(arg, key=value)'
  try:
    node = ast.parse(text.strip(), mode='eval').body
  except SyntaxError:
    raise ConfigError(usage) from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    try:
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise ConfigError(f'{what} {text!r}: arguments must be Python literals') from None
    return node.func.id, args, kwargs
  raise ConfigError(usage)


class Registry:
  """Op factories by name (`@registry.register('name')`), built from a spec by `registry.build(spec)`. `what` names
  the ops in errors ('preprocessing op')."""

  def __init__(self, what: str):
    self.what = what
    self.factories: dict[str, Callable[..., Any]] = {}

  def register(self, name: str):
    def add(factory):
      self.factories[name] = factory
      return factory
    return add

  def build(self, spec: str) -> list[Any]:
    """The ops of `spec`, each `factory(*args, **kwargs)`; a ConfigError names an unknown op or bad arguments."""
    ops = []
    for text in filter(None, (s.strip() for s in spec.split('|'))):
      name, args, kwargs = _parse_one(text, self.what)
      if name not in self.factories:
        raise ConfigError(f'unknown {self.what} {name!r} in {spec!r}; known ops: {", ".join(sorted(self.factories))}')
      try:
        ops.append(self.factories[name](*args, **kwargs))
      except TypeError as e:
        raise ConfigError(f'{self.what} {text!r}: {e}') from None
    return ops
