"""memlens: how small transformers memorize label noise while still reasoning.

Tasks, training and analyses on TransformerLens' ``HookedTransformer``; see README.md.
"""

from memlens.tasks import Dataset, Examples, make_task
from memlens.training import Run, load_run, make_run_config, train

__version__ = "0.1.0"

__all__ = ["Dataset", "Examples", "Run", "load_run", "make_run_config", "make_task", "train",
           "__version__"]
