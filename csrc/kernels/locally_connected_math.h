// Window index arithmetic of the locally-connected 2-d op, shared by the CPU passes
// and the CUDA kernels. No torch headers.
//
// Patch element k of output location l = (oy, ox) is (c, i, j) with
// k = (c*kernel_h + i)*kernel_w + j, the order of torch.nn.functional.unfold. Its
// kernel tap (i, j) reads input row oy*stride_h - pad_h + i*dilation_h and column
// ox*stride_w - pad_w + j*dilation_w of channel c; outside the input it reads zero.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace locallearn {

// Offset within one (in_h, in_w) input plane that kernel tap (i, j) of output
// location (oy, ox) reads, or -1 where it reads zero padding. Geometry is any
// struct with the fields of LocallyConnectedGeometry (csrc/ops/locally_connected.h).
template <typename Geometry>
LL_HOST_DEVICE int64_t tap_input_offset(const Geometry& g, int64_t oy, int64_t ox, int64_t i, int64_t j) {
  const int64_t y = oy * g.stride_h - g.pad_h + i * g.dilation_h;
  const int64_t x = ox * g.stride_w - g.pad_w + j * g.dilation_w;
  return (y >= 0 && y < g.in_h && x >= 0 && x < g.in_w) ? y * g.in_w + x : -1;
}

}  // namespace locallearn
