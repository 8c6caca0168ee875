"""memlens: how small transformers memorize label noise while still reasoning.

Tasks, training and analyses on TransformerLens models (``HookedTransformer`` on 3.9,
``TransformerBridge`` on 4.x: docs/backends.md); see README.md.
"""

from memlens.analysis import (
    encoding, fit_probes, intervene, logit_lens, make_counterfactuals, neuron_table, patch_grid,
    patch_intermediate, run_with_patch,
)
from memlens.tasks import Dataset, Examples, make_task
from memlens.training import Run, load_run, make_run_config, phase_summary, train

__version__ = "0.1.0"

__all__ = [
    "Dataset", "Examples", "Run", "__version__", "encoding", "fit_probes", "intervene",
    "load_run", "logit_lens", "make_counterfactuals", "make_run_config", "make_task",
    "neuron_table", "patch_grid", "patch_intermediate", "phase_summary", "run_with_patch", "train",
]
