"""Without the extension, or on a device it was not built for, every op runs its
reference with one warning, and gives the same results; an extension that is built but
fails to load stops the import instead."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from helpers import random_features, random_labels, relative_error

import locallearn
from locallearn import _native

CHECK_FALLBACK = textwrap.dedent(
    """
    import warnings, torch
    import locallearn
    from locallearn import _native
    from locallearn.ops import reference
    assert _native.extension is None, "the extension was loaded"
    torch.manual_seed(0)
    h = torch.randn(10, 12, requires_grad=True)
    a = torch.randn(10, 5, 3, 3)
    y = torch.randint(0, 3, (10,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = locallearn.similarity_matching_loss(h, y, num_classes=3)
        loss = loss + locallearn.similarity_matching_loss(a, y, num_classes=3)
        locallearn.channel_std(a)
        inverse_inputs = (torch.randn(10, 4), h, h + 1, torch.randn(4, 12), torch.randn(4))
        target = locallearn.ops.difference_target(*inverse_inputs, "tanh")
        projected = locallearn.ops.direct_feedback(a[:, 0, 0], 5, 1, 70, chunk=16)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "reference" in messages[0], messages
    loss.backward()
    expected = reference.similarity_matching_loss(h, y, None, 3) + reference.similarity_matching_loss(a, y, None, 3)
    assert torch.equal(loss, expected)
    assert torch.equal(target, reference.difference_target(*inverse_inputs, "tanh"))
    assert torch.equal(projected, reference.direct_feedback(a[:, 0, 0], 5, 1, 70, chunk=16))
    print("fallback ok:", messages[0])
    """
)


def run_python(code: str, env_update: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_update}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def extension_import_raises(error: str) -> str:
    """Code that makes importing locallearn._C raise ``error`` (a Python expression)."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys
        class ExtensionFinder(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "locallearn._C":
                    raise {error}
        sys.meta_path.insert(0, ExtensionFinder())
        """
    )


NOT_BUILT = "ModuleNotFoundError(\"No module named 'locallearn._C'\", name='locallearn._C')"
UNDEFINED_SYMBOL = "ImportError('_C.so: undefined symbol: _ZN3c1013MessageLoggerC1E', name='locallearn._C')"


def test_import_with_extension_hidden():
    hide = "import sys; sys.modules['locallearn._C'] = None\n"
    result = run_python(hide + CHECK_FALLBACK, {})
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout


def test_extension_switched_off_by_environment():
    result = run_python(CHECK_FALLBACK, {_native.DISABLE_ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert _native.DISABLE_ENV in result.stdout


def test_device_not_built_runs_reference_with_one_warning(monkeypatch, generator):
    """Forces the reference path in this process: the native ops claim no device."""
    features = random_features((16, 9), generator)
    labels = random_labels(16, 4, generator)
    native = locallearn.similarity_matching_loss(features, labels, num_classes=4)
    monkeypatch.setattr(_native, "built_devices", frozenset())
    monkeypatch.setattr(_native, "_warned_devices", set())
    with pytest.warns(UserWarning, match="reference") as caught:
        fallback = locallearn.similarity_matching_loss(features, labels, num_classes=4)
        locallearn.similarity_matching_loss(features, labels, num_classes=4)
    assert len(caught) == 1
    assert relative_error(fallback, native) < 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        locallearn.channel_std(torch.randn(2, 3, 2, 2))


def test_extension_not_built_runs_the_references():
    result = run_python(extension_import_raises(NOT_BUILT) + CHECK_FALLBACK, {})
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout and "No module named 'locallearn._C'" in result.stdout


@pytest.mark.parametrize(
    "error, shown",
    [
        (UNDEFINED_SYMBOL, "ImportError: _C.so: undefined symbol: _ZN3c1013MessageLoggerC1E"),
        ("OSError('libc10.so: cannot open shared object file')", "OSError: libc10.so: cannot open shared object"),
        ("ModuleNotFoundError(\"No module named 'torch._gone'\", name='torch._gone')",
         "ModuleNotFoundError: No module named 'torch._gone'"),
    ],
    ids=["undefined-symbol", "missing-library", "missing-dependency"],
)
def test_extension_that_fails_to_load_stops_the_import(error, shown):
    result = run_python(extension_import_raises(error) + "import locallearn\n", {})
    assert result.returncode != 0, "a broken extension was imported as if it were not built"
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: locallearn._C is built but fails to load"), result.stderr
    assert shown in last_line
    assert "pip install --no-build-isolation ." in last_line and "locallearn wheel that matches it" in last_line
    assert f"this is torch {torch.__version__}" in last_line
    assert f"{_native.DISABLE_ENV}=1" in last_line


def test_switching_off_skips_importing_a_broken_extension():
    result = run_python(extension_import_raises(UNDEFINED_SYMBOL) + CHECK_FALLBACK, {_native.DISABLE_ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert "fallback ok" in result.stdout
