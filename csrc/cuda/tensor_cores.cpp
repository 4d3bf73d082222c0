#include "tensor_cores.h"

#include <atomic>
#include <mutex>
#include <unordered_map>

#include "stable_cuda.h"

namespace locallearn {
namespace {

std::atomic<bool> tensor_cores_switch{true};

int compute_capability_major(int device) {
  static std::mutex mutex;
  static std::unordered_map<int, int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find(device);
  if (found != cache.end()) return found->second;
  int major = 0;
  STD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  cache.emplace(device, major);
  return major;
}

}  // namespace

void set_tensor_cores_enabled(bool enabled) { tensor_cores_switch.store(enabled); }

bool tensor_cores_enabled() { return tensor_cores_switch.load(); }

kernels::TensorCorePolicy tensor_core_policy(int device_index, bool allow_tf32) {
  return {compute_capability_major(device_index), allow_tf32, tensor_cores_enabled()};
}

}  // namespace locallearn
