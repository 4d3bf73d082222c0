// Schema, device-generic orchestration and CPU passes of the locally-connected 2-d
// op; the window index arithmetic is shared with the CUDA kernels
// (csrc/kernels/locally_connected_math.h).
//
// The CPU passes run one small GEMM per output location on opmath copies of that
// location's patches (B, C_in*kh*kw), never the whole unfolded input.
#include "locally_connected.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../kernels/locally_connected_math.h"
#include "checks.h"
#include "dtypes.h"
#include "no_autocast.h"

namespace locallearn {
namespace {

// ---- checks -----------------------------------------------------------------

void check_tensor(const char* op, const char* name, const at::Tensor& tensor, int64_t dims, const char* layout) {
  TORCH_CHECK_VALUE(tensor.dim() == dims, op, ": ", name, " must be ", layout, ", got ", tensor.sizes());
  TORCH_CHECK_VALUE(is_supported_float(tensor.scalar_type()), op, ": ", name,
                    " must be float32, float64, float16 or bfloat16, got ", tensor.scalar_type());
}

void check_pair(const char* op, const char* name, c10::IntArrayRef pair, int64_t minimum) {
  TORCH_CHECK_VALUE(pair.size() == 2 && pair[0] >= minimum && pair[1] >= minimum, op, ": ", name,
                    " must be two ints >= ", minimum, ", got ", pair);
}

// Windows along one dim, as for torch.nn.Conv2d; 0 when the window does not fit.
int64_t window_count(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t room = size + 2 * pad - dilation * (kernel - 1) - 1;
  return room < 0 ? 0 : room / stride + 1;
}

LocallyConnectedGeometry make_geometry(const char* op, int64_t batch, int64_t in_channels, int64_t in_h,
                                       int64_t in_w, int64_t out_channels, c10::IntArrayRef kernel_size,
                                       c10::IntArrayRef stride, c10::IntArrayRef padding,
                                       c10::IntArrayRef dilation) {
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK_VALUE(in_h >= 1 && in_w >= 1, op, ": the input must have a non-empty image, got ", in_h, "x", in_w);
  LocallyConnectedGeometry g{};
  g.batch = batch;
  g.in_channels = in_channels;
  g.in_h = in_h;
  g.in_w = in_w;
  g.out_channels = out_channels;
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.out_h = window_count(in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = window_count(in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  TORCH_CHECK_VALUE(g.out_h >= 1 && g.out_w >= 1, op, ": a ", kernel_size, " window with dilation ", dilation,
                    " does not fit in a ", in_h, "x", in_w, " input padded by ", padding);
  return g;
}

void check_weight(const char* op, const at::Tensor& weight, const LocallyConnectedGeometry& g) {
  TORCH_CHECK_VALUE(weight.sizes() == c10::IntArrayRef({g.locations(), g.out_channels, g.patch_size()}), op,
                    ": weight must be (H_out*W_out, C_out, C_in*kh*kw) = (", g.locations(), ", ", g.out_channels,
                    ", ", g.patch_size(), ") for a ", g.in_channels, "-channel ", g.in_h, "x", g.in_w,
                    " input and this window, got ", weight.sizes());
}

// ---- CPU passes -------------------------------------------------------------

// at::parallel_for's worker threads do not inherit the caller's dispatch state:
// every chunk of a CPU pass runs its matrix products below autograd and outside
// autocast, as the calling thread does.
struct KernelDispatchState {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  NoAutocast no_autocast;
};

// Plane offsets (or -1 for padding) of the kernel taps of one output location.
void tap_offsets(const LocallyConnectedGeometry& g, int64_t location, std::vector<int64_t>& offsets) {
  const int64_t oy = location / g.out_w, ox = location % g.out_w;
  for (const auto i : c10::irange(g.kernel_h)) {
    for (const auto j : c10::irange(g.kernel_w)) {
      offsets[i * g.kernel_w + j] = tap_input_offset(g, oy, ox, i, j);
    }
  }
}

// One location's patches of `planes` consecutive (H, W) input planes, in opmath:
// patches[p*taps + t] is tap t of plane p, so a (B, C_in, H, W) input gives the
// (B, C_in*kh*kw) patch matrix with K ordered (c, i, j).
template <typename scalar_t, typename acc_t>
void gather_patches(const scalar_t* planes_in, int64_t planes, int64_t plane_size,
                    const std::vector<int64_t>& offsets, acc_t* patches) {
  const int64_t taps = static_cast<int64_t>(offsets.size());
  for (const auto p : c10::irange(planes)) {
    const scalar_t* plane = planes_in + p * plane_size;
    for (const auto t : c10::irange(taps)) {
      patches[p * taps + t] = offsets[t] >= 0 ? static_cast<acc_t>(plane[offsets[t]]) : acc_t(0);
    }
  }
}

// The adjoint of gather_patches: adds each tap of the patches back onto the input
// element it was read from.
template <typename acc_t>
void scatter_patches(const acc_t* patches, int64_t planes, int64_t plane_size, const std::vector<int64_t>& offsets,
                     acc_t* planes_out) {
  const int64_t taps = static_cast<int64_t>(offsets.size());
  for (const auto p : c10::irange(planes)) {
    acc_t* plane = planes_out + p * plane_size;
    for (const auto t : c10::irange(taps)) {
      if (offsets[t] >= 0) plane[offsets[t]] += patches[p * taps + t];
    }
  }
}

void forward_pass_cpu(const LocallyConnectedGeometry& g, const at::Tensor& input, const at::Tensor& weight,
                      const at::Tensor& bias, at::Tensor& output) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "locally_connected2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto opmath = input.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const at::Tensor bias_columns = bias.defined() ? bias.view({g.out_channels, -1}).to(opmath) : at::Tensor();
    at::Tensor output_columns = output.view({g.batch, g.out_channels, -1});
    at::parallel_for(0, g.locations(), 1, [&](int64_t begin, int64_t end) {
      const KernelDispatchState state;
      std::vector<int64_t> offsets(g.kernel_h * g.kernel_w);
      at::Tensor patches = at::empty({g.batch, g.patch_size()}, opmath);
      at::Tensor result = at::empty({g.batch, g.out_channels}, opmath);
      for (int64_t location = begin; location < end; ++location) {
        tap_offsets(g, location, offsets);
        gather_patches(x, g.batch * g.in_channels, g.in_h * g.in_w, offsets, patches.mutable_data_ptr<acc_t>());
        const at::Tensor kernel = weight.select(0, location).to(opmath).t();
        if (bias_columns.defined()) {
          at::addmm_out(result, bias_columns.select(1, location), patches, kernel);
        } else {
          at::mm_out(result, patches, kernel);
        }
        output_columns.select(2, location).copy_(result);
      }
    });
  });
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void transpose_pass_cpu(const LocallyConnectedGeometry& g, const at::Tensor& grad_output, const at::Tensor& weight,
                        at::Tensor& grad_input) {
  // Blocks of batch rows x input channels, enough to keep every thread busy; each
  // block accumulates and writes its own part of grad_input.
  const int64_t threads = at::get_num_threads();
  const int64_t batch_block = ceil_div(g.batch, std::min(g.batch, threads));
  const int64_t channel_block =
      ceil_div(g.in_channels, std::min(g.in_channels, ceil_div(threads, ceil_div(g.batch, batch_block))));
  const int64_t channel_blocks = ceil_div(g.in_channels, channel_block);
  const int64_t blocks = ceil_div(g.batch, batch_block) * channel_blocks;
  const int64_t taps = g.kernel_h * g.kernel_w;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "locally_connected2d_transpose_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto opmath = grad_output.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
        const at::Tensor grad_columns = grad_output.view({g.batch, g.out_channels, -1});
        at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
          const KernelDispatchState state;
          std::vector<int64_t> offsets(taps);
          for (int64_t block = begin; block < end; ++block) {
            const int64_t first_row = block / channel_blocks * batch_block;
            const int64_t rows = std::min(batch_block, g.batch - first_row);
            const int64_t first_channel = block % channel_blocks * channel_block;
            const int64_t channels = std::min(channel_block, g.in_channels - first_channel);
            at::Tensor accumulated = at::zeros({rows, channels, g.in_h, g.in_w}, opmath);
            at::Tensor patch_grad = at::empty({rows, channels * taps}, opmath);
            for (const auto location : c10::irange(g.locations())) {
              tap_offsets(g, location, offsets);
              const at::Tensor grad_rows = grad_columns.select(2, location).narrow(0, first_row, rows).to(opmath);
              const at::Tensor kernel =
                  weight.select(0, location).narrow(1, first_channel * taps, channels * taps).to(opmath);
              at::mm_out(patch_grad, grad_rows, kernel);
              scatter_patches(patch_grad.const_data_ptr<acc_t>(), rows * channels, g.in_h * g.in_w, offsets,
                              accumulated.mutable_data_ptr<acc_t>());
            }
            grad_input.narrow(0, first_row, rows).narrow(1, first_channel, channels).copy_(accumulated);
          }
        });
      });
}

void weight_grad_pass_cpu(const LocallyConnectedGeometry& g, const at::Tensor& input, const at::Tensor& grad_output,
                          at::Tensor& grad_weight) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "locally_connected2d_weight_grad_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto opmath = input.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
        const scalar_t* x = input.const_data_ptr<scalar_t>();
        const at::Tensor grad_columns = grad_output.view({g.batch, g.out_channels, -1});
        at::parallel_for(0, g.locations(), 1, [&](int64_t begin, int64_t end) {
          const KernelDispatchState state;
          std::vector<int64_t> offsets(g.kernel_h * g.kernel_w);
          at::Tensor patches = at::empty({g.batch, g.patch_size()}, opmath);
          at::Tensor result = at::empty({g.out_channels, g.patch_size()}, opmath);
          for (int64_t location = begin; location < end; ++location) {
            tap_offsets(g, location, offsets);
            gather_patches(x, g.batch * g.in_channels, g.in_h * g.in_w, offsets,
                           patches.mutable_data_ptr<acc_t>());
            at::mm_out(result, grad_columns.select(2, location).to(opmath).t(), patches);
            grad_weight.select(0, location).copy_(result);
          }
        });
      });
}

constexpr LocallyConnectedPasses kCpuPasses{forward_pass_cpu, transpose_pass_cpu, weight_grad_pass_cpu};

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation) {
  return locally_connected2d_forward(kCpuPasses, input, weight, bias, kernel_size, stride, padding, dilation);
}

at::Tensor transpose_cpu(const at::Tensor& grad_output, const at::Tensor& weight, c10::IntArrayRef input_size,
                         c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                         c10::IntArrayRef dilation) {
  return locally_connected2d_transpose(kCpuPasses, grad_output, weight, input_size, kernel_size, stride, padding,
                                       dilation);
}

at::Tensor weight_grad_cpu(const at::Tensor& input, const at::Tensor& grad_output, c10::IntArrayRef kernel_size,
                           c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  return locally_connected2d_weight_grad(kCpuPasses, input, grad_output, kernel_size, stride, padding, dilation);
}

}  // namespace

at::Tensor locally_connected2d_forward(const LocallyConnectedPasses& passes, const at::Tensor& input,
                                       const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                       c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                       c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "locally_connected2d";
  check_tensor(op, "input", input, 4, "(B, C_in, H, W)");
  check_tensor(op, "weight", weight, 3, "(H_out*W_out, C_out, C_in*kh*kw)");
  check_same_dtype_and_device(op, "weight", weight, "input", input);
  const LocallyConnectedGeometry g = make_geometry(op, input.size(0), input.size(1), input.size(2), input.size(3),
                                                   weight.size(1), kernel_size, stride, padding, dilation);
  TORCH_CHECK_VALUE(g.in_channels >= 1, op, ": input must have at least one channel, got ", input.sizes());
  check_weight(op, weight, g);
  if (bias) {
    check_same_dtype_and_device(op, "bias", *bias, "input", input);
    TORCH_CHECK_VALUE(bias->sizes() == c10::IntArrayRef({g.out_channels, g.out_h, g.out_w}), op,
                      ": bias must be (C_out, H_out, W_out) = (", g.out_channels, ", ", g.out_h, ", ", g.out_w,
                      "), got ", bias->sizes());
  }
  const NoAutocast no_autocast;
  at::Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options());
  if (output.numel() == 0) return output;
  passes.forward(g, input.contiguous(), weight.contiguous(), bias ? bias->contiguous() : at::Tensor(), output);
  return output;
}

at::Tensor locally_connected2d_transpose(const LocallyConnectedPasses& passes, const at::Tensor& grad_output,
                                         const at::Tensor& weight, c10::IntArrayRef input_size,
                                         c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                         c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  constexpr const char* op = "locally_connected2d_transpose";
  check_tensor(op, "grad_output", grad_output, 4, "(B, C_out, H_out, W_out)");
  check_tensor(op, "weight", weight, 3, "(H_out*W_out, C_out, C_in*kh*kw)");
  check_same_dtype_and_device(op, "weight", weight, "grad_output", grad_output);
  check_pair(op, "input_size", input_size, 1);
  LocallyConnectedGeometry g = make_geometry(op, grad_output.size(0), 0, input_size[0], input_size[1],
                                             grad_output.size(1), kernel_size, stride, padding, dilation);
  const int64_t taps = g.kernel_h * g.kernel_w;
  TORCH_CHECK_VALUE(weight.size(2) >= taps && weight.size(2) % taps == 0, op,
                    ": weight's last dim must be C_in*kh*kw, a positive multiple of ", taps, ", got ", weight.sizes());
  g.in_channels = weight.size(2) / taps;
  TORCH_CHECK_VALUE(grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w, op,
                    ": grad_output must be (B, C_out, ", g.out_h, ", ", g.out_w, ") for input_size ", input_size,
                    " and this window, got ", grad_output.sizes());
  check_weight(op, weight, g);
  const NoAutocast no_autocast;
  at::Tensor grad_input = at::zeros({g.batch, g.in_channels, g.in_h, g.in_w}, grad_output.options());
  if (grad_input.numel() == 0 || g.out_channels == 0) return grad_input;
  passes.transpose(g, grad_output.contiguous(), weight.contiguous(), grad_input);
  return grad_input;
}

at::Tensor locally_connected2d_weight_grad(const LocallyConnectedPasses& passes, const at::Tensor& input,
                                           const at::Tensor& grad_output, c10::IntArrayRef kernel_size,
                                           c10::IntArrayRef stride, c10::IntArrayRef padding,
                                           c10::IntArrayRef dilation) {
  constexpr const char* op = "locally_connected2d_weight_grad";
  check_tensor(op, "input", input, 4, "(B, C_in, H, W)");
  check_tensor(op, "grad_output", grad_output, 4, "(B, C_out, H_out, W_out)");
  check_same_dtype_and_device(op, "grad_output", grad_output, "input", input);
  const LocallyConnectedGeometry g = make_geometry(op, input.size(0), input.size(1), input.size(2), input.size(3),
                                                   grad_output.size(1), kernel_size, stride, padding, dilation);
  TORCH_CHECK_VALUE(grad_output.size(0) == g.batch && grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w,
                    op, ": grad_output must be (B, C_out, H_out, W_out) = (", g.batch, ", C_out, ", g.out_h, ", ",
                    g.out_w, ") for input ", input.sizes(), " and this window, got ", grad_output.sizes());
  TORCH_CHECK_VALUE(g.in_channels >= 1, op, ": input must have at least one channel, got ", input.sizes());
  const NoAutocast no_autocast;
  at::Tensor grad_weight = at::empty({g.locations(), g.out_channels, g.patch_size()}, input.options());
  if (grad_weight.numel() == 0) return grad_weight;
  if (g.batch == 0) return grad_weight.zero_();
  passes.weight_grad(g, input.contiguous(), grad_output.contiguous(), grad_weight);
  return grad_weight;
}

}  // namespace locallearn

TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def(
      "locally_connected2d(Tensor input, Tensor weight, Tensor? bias, int[2] kernel_size, int[2] stride,"
      " int[2] padding, int[2] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "locally_connected2d_transpose(Tensor grad_output, Tensor weight, int[2] input_size, int[2] kernel_size,"
      " int[2] stride, int[2] padding, int[2] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "locally_connected2d_weight_grad(Tensor input, Tensor grad_output, int[2] kernel_size, int[2] stride,"
      " int[2] padding, int[2] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("locally_connected2d", &locallearn::forward_cpu);
  m.impl("locally_connected2d_transpose", &locallearn::transpose_cpu);
  m.impl("locally_connected2d_weight_grad", &locallearn::weight_grad_cpu);
}
