"""Training TransformerLens models from scratch, run directories and metrics."""

from memlens.training.config import RunConfig, TrainConfig, make_run_config
from memlens.training.metrics import evaluate, phase_summary
from memlens.training.run import Run, RunDirError, load_run
from memlens.training.trainer import TrainResult, train

__all__ = ["Run", "RunConfig", "RunDirError", "TrainConfig", "TrainResult", "evaluate",
           "load_run", "make_run_config", "phase_summary", "train"]
