"""What train.py and eval.py share: config flags, multi-host start-up, and bad input → exit code 2."""
import functools
import os
import sys
from typing import Any, Callable

from absl import flags, logging

from vision_models.errors import ConfigError


def clean_errors(main: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """Turns a ConfigError into one line on stderr and exit code 2, with no traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  return wrapped


def config_or_exit(flag: Any) -> Any:
  """The parsed `--config`, or exit 2 when it is missing."""
  if flag.value is None:
    print('error: --config=configs/NAME.py is required', file=sys.stderr)
    sys.exit(2)
  return flag.value


def define_common_flags() -> tuple[Any, Any]:
  """`--config` (with `--config.a.b=v` overrides) and `--workdir`; also quiets library INFO logs."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  logging.set_verbosity(logging.WARNING)
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/quickstart.py.',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.', required=True)
  return config, workdir
