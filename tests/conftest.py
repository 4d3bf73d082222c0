"""Test configuration: CUDA tests are skipped without a GPU; every random input is
drawn from a per-run seed printed in the header (set LOCALLEARN_TEST_SEED to replay)."""

import os
import random
import tempfile
import zlib

import pytest
import torch

# torch.compile's on-disk cache does not key on custom ops' fake kernels: keep
# compiled graphs of earlier builds of locallearn out of this run.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="locallearn-inductor-"))

SEED = int(os.environ.get("LOCALLEARN_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"locallearn test seed: LOCALLEARN_TEST_SEED={SEED}"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def generator(request) -> torch.Generator:
    """A CPU generator seeded from the run seed and the test's id."""
    return torch.Generator().manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny networks (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    one intra-op thread is as fast alone and far faster when other jobs share the cores
    (two spinning threads slowed test_ddtp_lra.py from 16 s to 135 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def native_kernels(monkeypatch):
    """For tests whose purpose is a native op: the test fails if a public op falls back to
    its pure-PyTorch reference (``_native.serves`` answering False), and errors unless a
    native kernel ran in it (counted by helpers.NativeDispatches). tests/test_native_dispatch.py
    shows that routing every op to the reference turns these tests red."""
    from helpers import NativeDispatches

    from locallearn import _native

    serves = _native.serves

    def native_or_fail(device):
        if not serves(device):
            raise AssertionError(f"a public op took the reference path on {device} in a test of the native op")
        return True

    monkeypatch.setattr(_native, "serves", native_or_fail)
    with NativeDispatches() as dispatches:
        yield dispatches
    assert dispatches.ops, "no native locallearn kernel ran in this test of the native ops"
