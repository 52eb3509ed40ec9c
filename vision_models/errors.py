"""The one exception type for bad user input: command lines turn it into exit code 2 and a one-line message."""


class ConfigError(ValueError):
  """Bad input from the user (config, flag, dataset, checkpoint); the message names the problem and the fix."""


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite loss or gradients); the last good checkpoint is kept."""
