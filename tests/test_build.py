"""The build itself: locallearn._C imports, has CUDA exactly when torch does, and every
op of the ``locallearn`` namespace has a CPU kernel, a CUDA kernel (CUDA builds), a fake
kernel for torch.compile and, for the public ops, an autograd formula. Against a CUDA
torch, CMake configures with the toolkit behind a wrapper nvcc and links no NVRTC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._library import simple_registry

from locallearn import _native
from locallearn.ops import NATIVE_OPS

REPO = Path(__file__).resolve().parents[1]
BACKWARD_OPS = ("similarity_matching_loss_backward", "channel_std_backward")


def registered_ops() -> list[str]:
    return sorted(name.removeprefix("locallearn::") for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("locallearn::"))


def test_extension_imports_with_cuda_exactly_when_torch_has_it():
    assert _native.extension is not None, f"locallearn._C did not load: {_native.load_error}"
    assert _native.extension.with_cuda == (torch.version.cuda is not None)
    if _native.extension.with_cuda:
        assert _native.built_devices == {"cpu", "cuda"}
        requested = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if requested:
            assert _native.extension.cuda_arch_list.split() == requested.replace(";", " ").split()
    else:
        assert _native.built_devices == {"cpu"} and _native.extension.cuda_arch_list == ""


def test_every_op_is_registered_for_every_built_device():
    assert registered_ops() == sorted((*NATIVE_OPS, *BACKWARD_OPS))
    for op in registered_ops():
        qualified = f"locallearn::{op}"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA") == _native.extension.with_cuda, op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Meta"), op
        assert simple_registry.singleton.find(qualified).fake_impl.kernel is not None, op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Autograd") == (op in NATIVE_OPS), op


# ---- CMake against a CUDA torch ------------------------------------------------


def toolkit_root() -> Path | None:
    """The CUDA toolkit this machine builds with: $CUDA_HOME, else /usr/local/cuda."""
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root).resolve()
    return None


needs_cuda_torch_and_nvcc = pytest.mark.skipif(
    torch.version.cuda is None or toolkit_root() is None, reason="needs a CUDA build of torch and a CUDA toolkit")


def build_tool(name: str) -> str:
    """cmake or ninja beside this Python (`make install` pip-installs both), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found; `make install` installs it")
    return found


def configure(tmp_path: Path, path_dirs: list[Path], **environment: str) -> subprocess.CompletedProcess:
    """CMake configure of the repository into tmp_path/build with PATH = path_dirs plus the
    system's, and no CUDA variable but those given."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX", "TORCH_CUDA_ARCH_LIST")}
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    env.update(environment)
    command = [build_tool("cmake"), "-S", str(REPO), "-B", str(tmp_path / "build"), "-G", "Ninja",
               f"-DCMAKE_MAKE_PROGRAM={build_tool('ninja')}", f"-DPython_EXECUTABLE={sys.executable}",
               "-DTORCH_CUDA_ARCH_LIST=9.0"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def wrapper_nvcc(directory: Path) -> Path:
    """An nvcc outside the toolkit that runs the toolkit's, as /usr/local/bin/nvcc does."""
    directory.mkdir(parents=True)
    wrapper = directory / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit_root() / "bin" / "nvcc"} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@needs_cuda_torch_and_nvcc
def test_configure_takes_the_toolkit_behind_a_wrapper_nvcc_and_links_no_nvrtc(tmp_path):
    wrapper = wrapper_nvcc(tmp_path / "wrapper-bin")
    result = configure(tmp_path, [wrapper.parent])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"locallearn: CUDA toolkit {toolkit_root()} (compiler {wrapper})" in result.stdout
    link_line = next(line for line in (tmp_path / "build" / "build.ninja").read_text().splitlines()
                     if line.startswith("build _C.") and "LINKER" in line)
    assert "libc10_cuda" in link_line and "libtorch_cpu" in link_line
    assert "nvrtc" not in link_line and "cublas" not in link_line


@needs_cuda_torch_and_nvcc
def test_configure_reads_cuda_home(tmp_path):
    """CUDA_HOME wins over the nvcc on PATH; a CUDA_HOME without bin/nvcc is an error naming it."""
    home = tmp_path / "home"
    wrapper_nvcc(home / "bin")
    result = configure(tmp_path, [], CUDA_HOME=str(home))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"locallearn: CUDA toolkit {toolkit_root()} (compiler {home / 'bin' / 'nvcc'})" in result.stdout

    empty = tmp_path / "no-toolkit"
    empty.mkdir()
    result = configure(tmp_path / "second", [], CUDA_HOME=str(empty))
    assert result.returncode != 0
    assert f"CUDA_HOME={empty} has no bin/nvcc" in " ".join(result.stderr.split())  # CMake wraps messages
