import pytest

from memlens.models import ModelConfig, build_model
from memlens.tasks import make_task


@pytest.fixture(scope="session")
def fda_tiny():
    task = make_task("fda", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0).eval()
    return task, model, task.generate(seed=0)


@pytest.fixture(scope="session")
def thr_tiny():
    task = make_task("thr", preset="tiny")
    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2), task, seed=0).eval()
    return task, model, task.generate(seed=0)
