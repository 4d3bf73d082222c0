// Argument checks shared by the ops' orchestration: every tensor argument's device
// and dtype are checked before any pass runs, so a kernel never receives a pointer
// into another device's memory (a CPU 0-dim gradient beside CUDA features, say).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace locallearn {

inline void check_same_device(const char* op, const char* name, const at::Tensor& tensor,
                              const char* reference_name, const at::Tensor& reference) {
  TORCH_CHECK_VALUE(tensor.device() == reference.device(), op, ": ", name, " is on ", tensor.device(), " but ",
                    reference_name, " is on ", reference.device());
}

inline void check_same_dtype_and_device(const char* op, const char* name, const at::Tensor& tensor,
                                        const char* reference_name, const at::Tensor& reference) {
  TORCH_CHECK_VALUE(tensor.scalar_type() == reference.scalar_type(), op, ": ", name, " must have the dtype of ",
                    reference_name, " (", reference.scalar_type(), "), got ", tensor.scalar_type());
  check_same_device(op, name, tensor, reference_name, reference);
}

inline void check_floating(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK_VALUE(at::isFloatingType(tensor.scalar_type()), op, ": ", name, " must be floating point, got ",
                    tensor.scalar_type());
}

}  // namespace locallearn
