"""Shared test set-up: every public tensor signature is checked with beartype via jaxtyping."""

import warnings

warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained (60 steps) and fully analyzed tiny FDA run directory, shared by the report,
    reproduce and experiment tests."""
    from memlens.analysis.runner import analyze_run
    from memlens.training import make_run_config, train

    run_dir = tmp_path_factory.mktemp("runs") / "fda-tiny-s0"
    train(make_run_config("fda", "tiny", 0, {"train.steps": 60}), run_dir, progress=False)
    analyze_run(run_dir, log=lambda _: None)
    return run_dir
