// What the ops need beyond LibTorch's stable ABI (torch/csrc/stable, torch/headeronly), in
// one place: the opmath type, dtype predicates, argument checks that raise with the op's own
// message, and the formatting of sizes and devices in those messages. Every translation unit
// that includes this is compiled with TORCH_TARGET_VERSION, so a non-stable ATen/c10 header
// is a build error, not a silent ABI dependency.
#pragma once

#include <torch/csrc/stable/device.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>
#include <torch/headeronly/util/shim_utils.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace locallearn {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Half = torch::headeronly::Half;
using BFloat16 = torch::headeronly::BFloat16;

// The type arithmetic on scalar_t is carried out in: float for the half types, else scalar_t.
template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, Half> || std::is_same_v<scalar_t, BFloat16>, float,
                                    scalar_t>;

inline ScalarType opmath_dtype(ScalarType dtype) {
  return dtype == ScalarType::Half || dtype == ScalarType::BFloat16 ? ScalarType::Float : dtype;
}

inline bool is_supported_float(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

inline bool is_floating(ScalarType t) { return is_supported_float(t); }

inline bool is_integral(ScalarType t) {
  return t == ScalarType::Byte || t == ScalarType::Char || t == ScalarType::Short || t == ScalarType::Int ||
         t == ScalarType::Long || t == ScalarType::UInt16 || t == ScalarType::UInt32 || t == ScalarType::UInt64;
}

inline bool has_shape(const Tensor& tensor, std::initializer_list<int64_t> shape) {
  if (tensor.dim() != static_cast<int64_t>(shape.size())) return false;
  int64_t d = 0;
  for (const int64_t size : shape) {
    if (tensor.size(d++) != size) return false;
  }
  return true;
}

// out = a @ b through the dispatcher's aten::mm.out, which autocast leaves alone; with
// ``out_dtype``, aten::mm.dtype_out (cuBLAS writing fp32 from half-precision operands).
inline void mm_out(Tensor& out, const Tensor& a, const Tensor& b, std::optional<ScalarType> out_dtype = std::nullopt) {
  using torch::stable::detail::from;
  if (out_dtype) {
    std::array<StableIValue, 4> stack{from(a), from(b), from(*out_dtype), from(out)};
    TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::mm", "dtype_out", stack.data(), TORCH_ABI_VERSION));
    (void)torch::stable::detail::to<Tensor>(stack[0]);  // the returned reference to out, released
  } else {
    std::array<StableIValue, 3> stack{from(a), from(b), from(out)};
    TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::mm", "out", stack.data(), TORCH_ABI_VERSION));
    (void)torch::stable::detail::to<Tensor>(stack[0]);
  }
}

// A (rows, columns) matrix view of host memory a CPU pass owns or only reads, for mm_out.
template <typename T>
Tensor matrix(const T* data, int64_t rows, int64_t columns, int64_t row_stride, int64_t column_stride = 1) {
  return torch::stable::from_blob(const_cast<T*>(data), {rows, columns}, {row_stride, column_stride},
                                  torch::stable::Device(torch::headeronly::DeviceType::CPU),
                                  torch::headeronly::CppTypeToScalarType<T>::value);
}

// "[2, 3, 4]", as torch prints sizes.
inline std::string format_sizes(torch::headeronly::IntHeaderOnlyArrayRef sizes) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < sizes.size(); ++i) text << (i ? ", " : "") << sizes[i];
  text << "]";
  return text.str();
}

// "cpu", "cuda:0", "meta": as torch prints devices.
inline std::string format_device(const Tensor& tensor) {
  if (tensor.is_cpu()) return "cpu";
  if (tensor.is_cuda()) return "cuda:" + std::to_string(tensor.get_device_index());
  return "meta";
}

template <typename... Parts>
[[noreturn]] void raise(const Parts&... parts) {
  std::ostringstream message;
  ((message << parts), ...);
  throw std::runtime_error(message.str());
}

// Raises std::runtime_error (RuntimeError in Python) with the concatenated message: the
// stable ABI offers no ValueError, and the Python wrappers raise ValueError before dispatch.
#define LOCALLEARN_CHECK(condition, ...)               \
  do {                                                 \
    if (!(condition)) ::locallearn::raise(__VA_ARGS__); \
  } while (false)

// body(scalar_t{}) for the storage type of ``dtype``, one of the floating dtypes the ops
// implement; callers write [&](auto zero) { using scalar_t = decltype(zero); ... }.
template <typename Body>
void dispatch_floating(ScalarType dtype, const char* name, const Body& body) {
  switch (dtype) {
    case ScalarType::Float: return body(float{});
    case ScalarType::Double: return body(double{});
    case ScalarType::Half: return body(Half{});
    case ScalarType::BFloat16: return body(BFloat16{});
    default: raise(name, ": not implemented for ", dtype);
  }
}

inline void check_same_device(const char* op, const char* name, const Tensor& tensor, const char* reference_name,
                              const Tensor& reference) {
  LOCALLEARN_CHECK(format_device(tensor) == format_device(reference), op, ": ", name, " is on ",
                   format_device(tensor), " but ", reference_name, " is on ", format_device(reference));
}

inline void check_floating(const char* op, const char* name, const Tensor& tensor) {
  LOCALLEARN_CHECK(is_floating(tensor.scalar_type()), op, ": ", name, " must be floating point, got ",
                   tensor.scalar_type());
}

inline void check_tensor(const char* op, const char* name, const Tensor& tensor, int64_t dims, const char* layout) {
  LOCALLEARN_CHECK(tensor.dim() == dims, op, ": ", name, " must be ", layout, ", got ", format_sizes(tensor.sizes()));
  LOCALLEARN_CHECK(is_supported_float(tensor.scalar_type()), op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", tensor.scalar_type());
}

inline void check_same_dtype_and_device(const char* op, const char* name, const Tensor& tensor,
                                        const char* reference_name, const Tensor& reference) {
  LOCALLEARN_CHECK(tensor.scalar_type() == reference.scalar_type(), op, ": ", name, " must have the dtype of ",
                   reference_name, " (", reference.scalar_type(), "), got ", tensor.scalar_type());
  check_same_device(op, name, tensor, reference_name, reference);
}

}  // namespace locallearn
