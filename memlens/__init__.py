"""memlens: how small transformers memorize label noise while still reasoning.

Tasks, training and analyses on TransformerLens' ``HookedTransformer``; see README.md.
"""

from memlens.tasks import Dataset, Examples, make_task

__version__ = "0.1.0"

__all__ = ["Dataset", "Examples", "make_task", "__version__"]
