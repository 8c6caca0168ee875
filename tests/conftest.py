"""Shared test set-up: tiny models and runs. Public tensor signatures are checked at run time
with jaxtyping and beartype (``--jaxtyping-packages`` in pyproject.toml's pytest options)."""

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


# memlens is imported inside the fixtures, not here: initial conftests load before pytest's
# configure step installs jaxtyping's import hook, and a module imported earlier goes unchecked.
@pytest.fixture(scope="session")
def fda_tiny():
    from memlens.models import ModelConfig, build_model
    from memlens.tasks import make_task

    task = make_task("fda", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0).eval()
    return task, model, task.generate(seed=0)


@pytest.fixture(scope="session")
def thr_tiny():
    from memlens.models import ModelConfig, build_model
    from memlens.tasks import make_task

    task = make_task("thr", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0).eval()
    return task, model, task.generate(seed=0)
