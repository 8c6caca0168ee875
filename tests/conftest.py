"""Shared test set-up: every public tensor signature is checked with beartype via jaxtyping."""

import warnings

warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
