"""Training: optimizer, train state, the jitted steps, checkpoints and metrics (no TensorFlow here; the loop in
`vision_models.training.trainer` reads data through `vision_models.data`)."""
from vision_models.training import optim, state, steps
from vision_models.training.checkpoint import Checkpointer
from vision_models.training.metrics import MetricWriter

__all__ = ['Checkpointer', 'MetricWriter', 'optim', 'state', 'steps']
