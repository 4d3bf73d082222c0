// The process-wide switch of the locally-connected CUDA kernels' tensor-core engine,
// and the policy each op call reads once. On by default; off runs the SIMT kernels for
// every dtype, so that tests and benchmarks reach them on devices with tensor cores
// (exposed as locallearn._C.set_tensor_cores_enabled).
#pragma once

#include "../kernels/locally_connected.cuh"

namespace locallearn {

void set_tensor_cores_enabled(bool enabled);
bool tensor_cores_enabled();

// The policy for a call on CUDA device `device_index`: its compute capability (queried
// once per device and cached), whether float32 may round to TF32 (the op's allow_tf32
// argument, which the Python wrapper takes from torch's float32 matmul precision) and
// the switch above.
kernels::TensorCorePolicy tensor_core_policy(int device_index, bool allow_tf32);

}  // namespace locallearn
