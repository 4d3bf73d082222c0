"""The build itself: locallearn._C imports, has CUDA exactly when torch does, and every
op of the ``locallearn`` namespace has a CPU kernel, a CUDA kernel (CUDA builds), a fake
kernel for torch.compile and, for the public ops but direct_feedback, an autograd
formula. CMake builds on LibTorch's stable ABI: against a CUDA torch it configures with
the toolkit behind a wrapper nvcc, links only the libraries that export the stable shims
and the CUDA runtime, and turns TORCH_CUDA_ARCH_LIST into SASS and PTX targets;
LOCALLEARN_CUDA=OFF builds the CPU ops against any torch, without a toolkit."""

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
NOT_DIFFERENTIABLE_OPS = ("direct_feedback",)
"""Public ops without an autograd formula: direct_feedback projects an error that is itself a gradient."""


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
        differentiable = op in NATIVE_OPS and op not in NOT_DIFFERENTIABLE_OPS
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "Autograd") == differentiable, op


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


def configure(tmp_path: Path, path_dirs: list[Path], *defines: str, **environment: str) -> subprocess.CompletedProcess:
    """CMake configure of the repository into tmp_path/build with PATH = path_dirs plus the
    system's, no CUDA variable but those given, and TORCH_CUDA_ARCH_LIST=9.0 unless the
    -D defines say otherwise."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX", "TORCH_CUDA_ARCH_LIST")}
    env["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    env.update(environment)
    command = [build_tool("cmake"), "-S", str(REPO), "-B", str(tmp_path / "build"), "-G", "Ninja",
               f"-DCMAKE_MAKE_PROGRAM={build_tool('ninja')}", f"-DPython_EXECUTABLE={sys.executable}",
               "-DTORCH_CUDA_ARCH_LIST=9.0", *defines]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def wrapper_nvcc(directory: Path) -> Path:
    """An nvcc outside the toolkit that runs the toolkit's, as /usr/local/bin/nvcc does."""
    directory.mkdir(parents=True)
    wrapper = directory / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit_root() / "bin" / "nvcc"} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@needs_cuda_torch_and_nvcc
def test_configure_takes_the_toolkit_behind_a_wrapper_nvcc_and_links_only_the_stable_shims(tmp_path):
    wrapper = wrapper_nvcc(tmp_path / "wrapper-bin")
    result = configure(tmp_path, [wrapper.parent])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"locallearn: CUDA toolkit {toolkit_root()} (compiler {wrapper})" in result.stdout
    link_line = link_libraries(tmp_path / "build")
    assert "libtorch_cpu.so" in link_line and "libtorch_cuda.so" in link_line and "libcudart" in link_line
    for unwanted in ("c10_cuda", "libc10.so", "torch_python", "nvrtc", "cublas", "cudnn"):
        assert unwanted not in link_line, unwanted


def link_libraries(build: Path) -> str:
    """The LINK_LIBRARIES of the _C module in a configured build.ninja."""
    lines = (build / "build.ninja").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("build _C.") and "LINKER" in line)
    return next(line for line in lines[start:] if line.strip().startswith("LINK_LIBRARIES"))


def cuda_flags(build: Path) -> str:
    return " ".join(line for line in (build / "build.ninja").read_text().splitlines()
                    if line.strip().startswith("FLAGS") and "arch" in line)


@needs_cuda_torch_and_nvcc
def test_arch_list_becomes_sass_and_ptx_targets(tmp_path):
    """8.0;9.0+PTX: SASS for sm_80 and sm_90, PTX for compute_90 only; fatbins compressed."""
    result = configure(tmp_path, [toolkit_root() / "bin"], "-DTORCH_CUDA_ARCH_LIST=8.0;9.0+PTX")
    assert result.returncode == 0, result.stdout + result.stderr
    flags = cuda_flags(tmp_path / "build")
    assert "sm_80" in flags and "sm_90" in flags and "compute_90" in flags, flags
    assert "code=[compute_80]" not in flags, flags
    assert "-Xfatbin=-compress-all" in (tmp_path / "build" / "build.ninja").read_text()

    bad = configure(tmp_path / "bad", [toolkit_root() / "bin"], "-DTORCH_CUDA_ARCH_LIST=sm_90")
    assert bad.returncode != 0
    assert "TORCH_CUDA_ARCH_LIST entry 'sm_90' is not of the form" in " ".join(bad.stderr.split())


def test_cpu_only_build_needs_no_toolkit_and_cuda_on_needs_a_cuda_torch(tmp_path):
    """LOCALLEARN_CUDA=OFF (the CPU wheel) configures against any torch with no nvcc
    anywhere; LOCALLEARN_CUDA=ON against a CPU-only torch stops with an error."""
    result = configure(tmp_path, [], "-DLOCALLEARN_CUDA=OFF", CUDACXX="/nonexistent/nvcc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "locallearn: building the CPU ops only" in result.stdout
    assert "libtorch_cuda" not in link_libraries(tmp_path / "build")
    if torch.version.cuda is None:
        result = configure(tmp_path / "on", [], "-DLOCALLEARN_CUDA=ON")
        assert result.returncode != 0
        assert "LOCALLEARN_CUDA=ON, but the torch at" in " ".join(result.stderr.split())


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
