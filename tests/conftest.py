import contextlib
import importlib.util
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# State-dict keys and shapes of the official ViTDet and Mask2Former checkpoints (a copy of the
# project's shared fixtures, so that a clone tests on its own).
FIXTURES = os.path.join(REPO, "tests", "fixtures", "checkpoint_keys")

# Tests run on few cores, and results must not depend on how many threads there are.
torch.set_num_threads(min(2, torch.get_num_threads()))


def load_script(path):
    """A script of the repository (train_net.py, tools/*.py, demo/demo.py), which is not part of
    an installed package, loaded as a module."""
    path = os.fspath(path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def skip_weight_init():
    """Build big models fast when only their parameter names and shapes matter."""
    names = [
        "trunc_normal_", "normal_", "constant_", "kaiming_normal_", "kaiming_uniform_",
        "xavier_uniform_", "xavier_normal_", "uniform_", "zeros_", "ones_",
    ]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


@pytest.fixture(scope="session")
def fixtures_dir():
    if not os.path.isdir(FIXTURES):
        pytest.fail(f"checkpoint key fixtures not found at {FIXTURES}")
    return FIXTURES


# What every token reduction method shares; the other ExpediteConfig keys the tests use are
# Expedit's own settings (``expedite.expedit.<field>``).
COMMON_SETTINGS = ("enabled", "method", "location")


def expedit_settings(**flat):
    """ExpediteConfig (or ``expedite_node``) arguments from flat Expedit settings: ``enabled``,
    ``method`` and ``location`` as they are, every other field under ``expedit``."""
    common = {k: v for k, v in flat.items() if k in COMMON_SETTINGS}
    return {**common, "expedit": {k: v for k, v in flat.items() if k not in COMMON_SETTINGS}}


def expedit_config(**flat):
    """``ExpediteConfig`` from flat Expedit settings (see :func:`expedit_settings`)."""
    from expedite import ExpediteConfig

    return ExpediteConfig(**expedit_settings(**flat))


def set_expedit(config, key, value):
    """Assign a flat Expedit setting on a built config: a common one on the config itself,
    the others on its ``expedit`` settings."""
    setattr(config if key in COMMON_SETTINGS else config.expedit, key, value)


@pytest.fixture(scope="module")
def one_thread():
    """Small models on a busy 2-core machine: intra-op threads cost more than they save. A test
    module uses it for all its tests with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
