"""The tests of the native ops can fail (issue 19). The mutation: ``_native.serves`` answers
False on every device while ``_native.built_devices`` still says cpu, so every public op
silently runs its pure-PyTorch reference. Before the ``native_kernels`` fixture
(tests/conftest.py) that left test_similarity_native.py at 61 passed and
test_locally_connected.py at 83 passed; here it must turn every CPU test of a native op red."""

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import require_native

TESTS = Path(__file__).parent
MUTATION = "from locallearn import _native\n\n_native.serves = lambda device: False\n"
NATIVE_OP_TESTS = ("forward_backward or (non_contiguous and not native_non) or dead_rows or asymmetric_target "
                   "or worker_threads or (adjoint and native) or (gradcheck and native) or (autocast and not reference)")
"""Every CPU test of a native op through the public API (the reference variants of the parametrised ones
left out; the tests that call ``torch.ops.locallearn`` directly cannot take the reference path)."""


def run_native_op_tests(plugin_folder: Path | None) -> str:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", NATIVE_OP_TESTS,
               str(TESTS / "test_similarity_native.py"), str(TESTS / "test_locally_connected.py")]
    environment = dict(os.environ)
    if plugin_folder is not None:
        command += ["-p", "route_to_reference"]
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_folder), environment.get("PYTHONPATH")]))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=TESTS.parent)
    return result.stdout.strip().splitlines()[-1]


def test_routing_every_op_to_the_reference_fails_every_native_op_test(tmp_path):
    require_native("cpu")
    (tmp_path / "route_to_reference.py").write_text(MUTATION, encoding="utf-8")
    summary = run_native_op_tests(tmp_path)
    failed = re.search(r"(\d+) failed", summary)
    assert failed and int(failed.group(1)) >= 50 and "passed" not in summary, summary
