"""What train.py and eval.py share: config flags, multi-host start-up, and bad input → exit code 2."""
import functools
import os
import sys
from typing import Any, Callable

from absl import flags, logging

from vision_models.errors import ConfigError, TrainingError


def clean_errors(main: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """Turns a ConfigError into one line on stderr and exit code 2 (a TrainingError: exit code 1), no traceback."""
  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    except TrainingError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(1)
  return wrapped


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a bad flag, config argument or override (wrong type, unknown field) exits 2 with one
  line."""
  try:
    return flags.FLAGS(argv)
  except OSError as e:  # the config file does not load (also raised here when an override needs it)
    _config_file_error(e)
  except (flags.Error, AttributeError, KeyError, ValueError) as e:
    # ml_collections raises an unknown field's AttributeError raw, and wraps a config's own error with its traceback
    # in the message, whose last line names the problem.
    last = ([line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__])[-1]
    if isinstance(e, AttributeError):
      field = next((a.split('=')[0] for a in argv if a.startswith('--config.') and last.strip('"\'') in a), last)
      last = f'unknown config field {field}: check its spelling against the config file'
    print(f'error: {last}', file=sys.stderr)
    sys.exit(2)


def _config_file_error(error: OSError) -> None:
  print(f'error: cannot load the config file ({str(error).splitlines()[-1].strip()}); check the --config path',
        file=sys.stderr)
  sys.exit(2)


def config_or_exit(flag: Any) -> Any:
  """The parsed `--config`, or exit 2 when it is missing or its file does not load."""
  try:
    value = flag.value
    if value is not None:
      value.get('task')  # ml_collections defers a missing or unreadable file's error to the first field read
  except OSError as e:
    _config_file_error(e)
  if value is None:
    print('error: --config=configs/NAME.py is required', file=sys.stderr)
    sys.exit(2)
  return value


def init_distributed() -> None:
  """Starts JAX's multi-controller runtime when this process is one of several.

  Explicit `--coordinator_address/--num_processes/--process_id` win; otherwise a SLURM job with several tasks or a
  multi-host TPU slice is auto-detected by `jax.distributed.initialize()`. A single process does nothing.
  """
  import jax
  f = flags.FLAGS
  if f.coordinator_address:
    jax.distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
  elif int(os.environ.get('SLURM_NTASKS', '1')) > 1 or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    jax.distributed.initialize()


def define_common_flags() -> tuple[Any, Any]:
  """`--config` (with `--config.a.b=v` overrides) and `--workdir`; also quiets library INFO logs."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  logging.set_verbosity(logging.WARNING)
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/quickstart.py.',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.', required=True)
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for several processes without SLURM/TPU.')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
  flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
  return config, workdir
