#!/usr/bin/env bash
# cibuildwheel's before-all, inside the manylinux_2_28 image (AlmaLinux 8): for the CUDA
# wheel (LOCALLEARN_WHEEL=cu130), the CUDA 13.0 compiler and runtime headers from NVIDIA's
# RHEL 8 repository, and nothing else (locallearn links no other CUDA library). The CPU
# wheel needs no toolkit.
set -euo pipefail
[[ "${LOCALLEARN_WHEEL:-}" == cu130 ]] || { echo "LOCALLEARN_WHEEL=${LOCALLEARN_WHEEL:-unset}: no CUDA toolkit"; exit 0; }
dnf install -y dnf-plugins-core
dnf config-manager --add-repo https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y cuda-nvcc-13-0 cuda-cudart-devel-13-0
/usr/local/cuda-13.0/bin/nvcc --version
