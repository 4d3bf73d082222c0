// Schema, device-generic orchestration and CPU passes of the locally-connected 2-d
// op; the window index arithmetic is shared with the CUDA kernels
// (csrc/kernels/locally_connected_math.h).
//
// The CPU passes run one small GEMM per output location (aten::mm.out on views of
// per-thread opmath buffers) on that location's patches (B, C_in*kh*kw), never the
// whole unfolded input; gathering, type conversion, bias and scattering are plain loops.
#include "locally_connected.h"

#include <algorithm>
#include <vector>

#include "../kernels/locally_connected_math.h"

namespace locallearn {
namespace {

// ---- checks -----------------------------------------------------------------

void check_pair(const char* op, const char* name, IntArrayRef pair, int64_t minimum) {
  LOCALLEARN_CHECK(pair.size() == 2 && pair[0] >= minimum && pair[1] >= minimum, op, ": ", name,
                   " must be two ints >= ", minimum, ", got ", format_sizes(pair));
}

// Windows along one dim, as for torch.nn.Conv2d; 0 when the window does not fit.
int64_t window_count(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t room = size + 2 * pad - dilation * (kernel - 1) - 1;
  return room < 0 ? 0 : room / stride + 1;
}

LocallyConnectedGeometry make_geometry(const char* op, int64_t batch, int64_t in_channels, int64_t in_h,
                                       int64_t in_w, int64_t out_channels, IntArrayRef kernel_size,
                                       IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  LOCALLEARN_CHECK(in_h >= 1 && in_w >= 1, op, ": the input must have a non-empty image, got ", in_h, "x", in_w);
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
  LOCALLEARN_CHECK(g.out_h >= 1 && g.out_w >= 1, op, ": a ", format_sizes(kernel_size), " window with dilation ",
                   format_sizes(dilation), " does not fit in a ", in_h, "x", in_w, " input padded by ",
                   format_sizes(padding));
  return g;
}

void check_weight(const char* op, const Tensor& weight, const LocallyConnectedGeometry& g) {
  LOCALLEARN_CHECK(has_shape(weight, {g.locations(), g.out_channels, g.patch_size()}), op,
                   ": weight must be (H_out*W_out, C_out, C_in*kh*kw) = (", g.locations(), ", ", g.out_channels,
                   ", ", g.patch_size(), ") for a ", g.in_channels, "-channel ", g.in_h, "x", g.in_w,
                   " input and this window, got ", format_sizes(weight.sizes()));
}

// ---- CPU passes -------------------------------------------------------------

// out = a @ b for matrix views of opmath buffers.
void matmul_into(Tensor out, const Tensor& a, const Tensor& b) { mm_out(out, a, b); }

// Plane offsets (or -1 for padding) of the kernel taps of one output location.
void tap_offsets(const LocallyConnectedGeometry& g, int64_t location, std::vector<int64_t>& offsets) {
  const int64_t oy = location / g.out_w, ox = location % g.out_w;
  for (int64_t i = 0; i < g.kernel_h; ++i) {
    for (int64_t j = 0; j < g.kernel_w; ++j) offsets[i * g.kernel_w + j] = tap_input_offset(g, oy, ox, i, j);
  }
}

// One location's patches of `planes` consecutive (H, W) input planes, in opmath:
// patches[p*taps + t] is tap t of plane p, so a (B, C_in, H, W) input gives the
// (B, C_in*kh*kw) patch matrix with K ordered (c, i, j).
template <typename scalar_t, typename acc_t>
void gather_patches(const scalar_t* planes_in, int64_t planes, int64_t plane_size,
                    const std::vector<int64_t>& offsets, acc_t* patches) {
  const int64_t taps = static_cast<int64_t>(offsets.size());
  for (int64_t p = 0; p < planes; ++p) {
    const scalar_t* plane = planes_in + p * plane_size;
    for (int64_t t = 0; t < taps; ++t) {
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
  for (int64_t p = 0; p < planes; ++p) {
    acc_t* plane = planes_out + p * plane_size;
    for (int64_t t = 0; t < taps; ++t) {
      if (offsets[t] >= 0) plane[offsets[t]] += patches[p * taps + t];
    }
  }
}

// ``rows`` × ``columns`` of storage values at ``source`` (row stride ``stride``) as opmath
// values: ``source`` itself when the storage is the opmath type, else converted into
// ``buffer`` by one torch copy (vectorised), a location at a time so that it stays in cache.
template <typename scalar_t, typename acc_t>
const acc_t* in_opmath(const scalar_t* source, int64_t rows, int64_t columns, int64_t stride,
                       std::vector<acc_t>& buffer, int64_t& result_stride) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    result_stride = stride;
    return source;
  } else {
    buffer.resize(rows * columns);
    result_stride = columns;
    Tensor converted = matrix(buffer.data(), rows, columns, columns);
    torch::stable::copy_(converted, matrix(source, rows, columns, stride));
    return buffer.data();
  }
}

void forward_pass_cpu(const LocallyConnectedGeometry& g, const Tensor& input, const Tensor& weight,
                      const std::optional<Tensor>& bias, Tensor& output, bool /*allow_tf32*/) {
  dispatch_floating(input.scalar_type(), "locally_connected2d_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    const int64_t patch = g.patch_size(), locations = g.locations();
    torch::stable::parallel_for(0, locations, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> offsets(g.kernel_h * g.kernel_w);
      std::vector<acc_t> patches(g.batch * patch), result(g.batch * g.out_channels), kernel_buffer;
      for (int64_t location = begin; location < end; ++location) {
        tap_offsets(g, location, offsets);
        gather_patches(x, g.batch * g.in_channels, g.in_h * g.in_w, offsets, patches.data());
        // (C_out, K) weights of this location, read as their (K, C_out) transpose.
        int64_t kernel_stride = 0;
        const acc_t* kernel =
            in_opmath(w + location * g.out_channels * patch, g.out_channels, patch, patch, kernel_buffer, kernel_stride);
        matmul_into(matrix(result.data(), g.batch, g.out_channels, g.out_channels),
                    matrix(patches.data(), g.batch, patch, patch), matrix(kernel, patch, g.out_channels, 1, kernel_stride));
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t c = 0; c < g.out_channels; ++c) {
            const acc_t shift = b ? static_cast<acc_t>(b[c * locations + location]) : acc_t(0);
            out[(n * g.out_channels + c) * locations + location] =
                static_cast<scalar_t>(result[n * g.out_channels + c] + shift);
          }
        }
      }
    });
  });
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void transpose_pass_cpu(const LocallyConnectedGeometry& g, const Tensor& grad_output, const Tensor& weight,
                        Tensor& grad_input, bool /*allow_tf32*/) {
  // Blocks of batch rows x input channels, enough to keep every thread busy; each
  // block accumulates and writes its own part of grad_input.
  const int64_t threads = torch::stable::get_num_threads();
  const int64_t batch_block = ceil_div(g.batch, std::min(g.batch, threads));
  const int64_t channel_block =
      ceil_div(g.in_channels, std::min(g.in_channels, ceil_div(threads, ceil_div(g.batch, batch_block))));
  const int64_t channel_blocks = ceil_div(g.in_channels, channel_block);
  const int64_t blocks = ceil_div(g.batch, batch_block) * channel_blocks;
  const int64_t taps = g.kernel_h * g.kernel_w, patch = g.patch_size(), locations = g.locations();
  const int64_t plane = g.in_h * g.in_w;
  dispatch_floating(grad_output.scalar_type(), "locally_connected2d_transpose_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* grad = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    scalar_t* grad_in = grad_input.mutable_data_ptr<scalar_t>();
    torch::stable::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> offsets(taps);
      std::vector<acc_t> accumulated, patch_grad, grad_rows, kernel_buffer;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first_row = block / channel_blocks * batch_block;
        const int64_t rows = std::min(batch_block, g.batch - first_row);
        const int64_t first_channel = block % channel_blocks * channel_block;
        const int64_t channels = std::min(channel_block, g.in_channels - first_channel);
        accumulated.assign(rows * channels * plane, acc_t(0));
        patch_grad.resize(rows * channels * taps);
        grad_rows.resize(rows * g.out_channels);
        for (int64_t location = 0; location < locations; ++location) {
          tap_offsets(g, location, offsets);
          for (int64_t n = 0; n < rows; ++n) {
            for (int64_t c = 0; c < g.out_channels; ++c) {
              grad_rows[n * g.out_channels + c] =
                  static_cast<acc_t>(grad[((first_row + n) * g.out_channels + c) * locations + location]);
            }
          }
          // This block's input channels of the location's (C_out, K) weights.
          int64_t kernel_stride = 0;
          const acc_t* kernel = in_opmath(w + location * g.out_channels * patch + first_channel * taps,
                                          g.out_channels, channels * taps, patch, kernel_buffer, kernel_stride);
          matmul_into(matrix(patch_grad.data(), rows, channels * taps, channels * taps),
                      matrix(grad_rows.data(), rows, g.out_channels, g.out_channels),
                      matrix(kernel, g.out_channels, channels * taps, kernel_stride));
          scatter_patches(patch_grad.data(), rows * channels, plane, offsets, accumulated.data());
        }
        for (int64_t n = 0; n < rows; ++n) {
          for (int64_t c = 0; c < channels; ++c) {
            const acc_t* from = accumulated.data() + (n * channels + c) * plane;
            scalar_t* to = grad_in + ((first_row + n) * g.in_channels + first_channel + c) * plane;
            for (int64_t e = 0; e < plane; ++e) to[e] = static_cast<scalar_t>(from[e]);
          }
        }
      }
    });
  });
}

void weight_grad_pass_cpu(const LocallyConnectedGeometry& g, const Tensor& input, const Tensor& grad_output,
                          Tensor& grad_weight, bool /*allow_tf32*/) {
  dispatch_floating(input.scalar_type(), "locally_connected2d_weight_grad_cpu", [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* grad = grad_output.const_data_ptr<scalar_t>();
    scalar_t* grad_w = grad_weight.mutable_data_ptr<scalar_t>();
    const int64_t patch = g.patch_size(), locations = g.locations();
    torch::stable::parallel_for(0, locations, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> offsets(g.kernel_h * g.kernel_w);
      std::vector<acc_t> patches(g.batch * patch), grad_columns(g.batch * g.out_channels),
          result(std::is_same_v<scalar_t, acc_t> ? 0 : g.out_channels * patch);
      for (int64_t location = begin; location < end; ++location) {
        tap_offsets(g, location, offsets);
        gather_patches(x, g.batch * g.in_channels, g.in_h * g.in_w, offsets, patches.data());
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t c = 0; c < g.out_channels; ++c) {
            grad_columns[n * g.out_channels + c] =
                static_cast<acc_t>(grad[(n * g.out_channels + c) * locations + location]);
          }
        }
        // (C_out, K) = grad_columnsᵀ (C_out, B) @ patches (B, K), straight into grad_weight
        // in opmath storage, else into `result` and converted by one (vectorised) torch copy.
        Tensor to = matrix(grad_w + location * g.out_channels * patch, g.out_channels, patch, patch);
        const Tensor product = std::is_same_v<scalar_t, acc_t> ? to : matrix(result.data(), g.out_channels, patch, patch);
        matmul_into(product, matrix(grad_columns.data(), g.out_channels, g.batch, 1, g.out_channels),
                    matrix(patches.data(), g.batch, patch, patch));
        if constexpr (!std::is_same_v<scalar_t, acc_t>) torch::stable::copy_(to, product);
      }
    });
  });
}

constexpr LocallyConnectedPasses kCpuPasses{forward_pass_cpu, transpose_pass_cpu, weight_grad_pass_cpu};

using Ints = std::vector<int64_t>;

Tensor forward_cpu(Tensor input, Tensor weight, std::optional<Tensor> bias, Ints kernel_size, Ints stride,
                   Ints padding, Ints dilation, bool allow_tf32) {
  return locally_connected2d_forward(kCpuPasses, input, weight, bias, kernel_size, stride, padding, dilation,
                                     allow_tf32);
}

Tensor transpose_cpu(Tensor grad_output, Tensor weight, Ints input_size, Ints kernel_size, Ints stride, Ints padding,
                     Ints dilation, bool allow_tf32) {
  return locally_connected2d_transpose(kCpuPasses, grad_output, weight, input_size, kernel_size, stride, padding,
                                       dilation, allow_tf32);
}

Tensor weight_grad_cpu(Tensor input, Tensor grad_output, Ints kernel_size, Ints stride, Ints padding,
                       Ints dilation, bool allow_tf32) {
  return locally_connected2d_weight_grad(kCpuPasses, input, grad_output, kernel_size, stride, padding, dilation,
                                         allow_tf32);
}

}  // namespace

Tensor locally_connected2d_forward(const LocallyConnectedPasses& passes, const Tensor& input, const Tensor& weight,
                                   const std::optional<Tensor>& bias, IntArrayRef kernel_size, IntArrayRef stride,
                                   IntArrayRef padding, IntArrayRef dilation, bool allow_tf32) {
  constexpr const char* op = "locally_connected2d";
  check_tensor(op, "input", input, 4, "(B, C_in, H, W)");
  check_tensor(op, "weight", weight, 3, "(H_out*W_out, C_out, C_in*kh*kw)");
  check_same_dtype_and_device(op, "weight", weight, "input", input);
  const LocallyConnectedGeometry g = make_geometry(op, input.size(0), input.size(1), input.size(2), input.size(3),
                                                   weight.size(1), kernel_size, stride, padding, dilation);
  LOCALLEARN_CHECK(g.in_channels >= 1, op, ": input must have at least one channel, got ",
                   format_sizes(input.sizes()));
  check_weight(op, weight, g);
  if (bias) {
    check_same_dtype_and_device(op, "bias", *bias, "input", input);
    LOCALLEARN_CHECK(has_shape(*bias, {g.out_channels, g.out_h, g.out_w}), op,
                     ": bias must be (C_out, H_out, W_out) = (", g.out_channels, ", ", g.out_h, ", ", g.out_w,
                     "), got ", format_sizes(bias->sizes()));
  }
  Tensor output = torch::stable::new_empty(input, {g.batch, g.out_channels, g.out_h, g.out_w});
  if (output.numel() == 0) return output;
  const std::optional<Tensor> contiguous_bias =
      bias ? std::optional<Tensor>(torch::stable::contiguous(*bias)) : std::nullopt;
  passes.forward(g, torch::stable::contiguous(input), torch::stable::contiguous(weight), contiguous_bias, output,
                 allow_tf32);
  return output;
}

Tensor locally_connected2d_transpose(const LocallyConnectedPasses& passes, const Tensor& grad_output,
                                     const Tensor& weight, IntArrayRef input_size, IntArrayRef kernel_size,
                                     IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                     bool allow_tf32) {
  constexpr const char* op = "locally_connected2d_transpose";
  check_tensor(op, "grad_output", grad_output, 4, "(B, C_out, H_out, W_out)");
  check_tensor(op, "weight", weight, 3, "(H_out*W_out, C_out, C_in*kh*kw)");
  check_same_dtype_and_device(op, "weight", weight, "grad_output", grad_output);
  check_pair(op, "input_size", input_size, 1);
  LocallyConnectedGeometry g = make_geometry(op, grad_output.size(0), 0, input_size[0], input_size[1],
                                             grad_output.size(1), kernel_size, stride, padding, dilation);
  const int64_t taps = g.kernel_h * g.kernel_w;
  LOCALLEARN_CHECK(weight.size(2) >= taps && weight.size(2) % taps == 0, op,
                   ": weight's last dim must be C_in*kh*kw, a positive multiple of ", taps, ", got ",
                   format_sizes(weight.sizes()));
  g.in_channels = weight.size(2) / taps;
  LOCALLEARN_CHECK(grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w, op,
                   ": grad_output must be (B, C_out, ", g.out_h, ", ", g.out_w, ") for input_size ",
                   format_sizes(input_size), " and this window, got ", format_sizes(grad_output.sizes()));
  check_weight(op, weight, g);
  Tensor grad_input = torch::stable::new_zeros(grad_output, {g.batch, g.in_channels, g.in_h, g.in_w});
  if (grad_input.numel() == 0 || g.out_channels == 0) return grad_input;
  passes.transpose(g, torch::stable::contiguous(grad_output), torch::stable::contiguous(weight), grad_input,
                   allow_tf32);
  return grad_input;
}

Tensor locally_connected2d_weight_grad(const LocallyConnectedPasses& passes, const Tensor& input,
                                       const Tensor& grad_output, IntArrayRef kernel_size, IntArrayRef stride,
                                       IntArrayRef padding, IntArrayRef dilation, bool allow_tf32) {
  constexpr const char* op = "locally_connected2d_weight_grad";
  check_tensor(op, "input", input, 4, "(B, C_in, H, W)");
  check_tensor(op, "grad_output", grad_output, 4, "(B, C_out, H_out, W_out)");
  check_same_dtype_and_device(op, "grad_output", grad_output, "input", input);
  const LocallyConnectedGeometry g = make_geometry(op, input.size(0), input.size(1), input.size(2), input.size(3),
                                                   grad_output.size(1), kernel_size, stride, padding, dilation);
  LOCALLEARN_CHECK(
      grad_output.size(0) == g.batch && grad_output.size(2) == g.out_h && grad_output.size(3) == g.out_w, op,
      ": grad_output must be (B, C_out, H_out, W_out) = (", g.batch, ", C_out, ", g.out_h, ", ", g.out_w,
      ") for input ", format_sizes(input.sizes()), " and this window, got ", format_sizes(grad_output.sizes()));
  LOCALLEARN_CHECK(g.in_channels >= 1, op, ": input must have at least one channel, got ",
                   format_sizes(input.sizes()));
  Tensor grad_weight = torch::stable::new_empty(input, {g.locations(), g.out_channels, g.patch_size()});
  if (grad_weight.numel() == 0) return grad_weight;
  if (g.batch == 0) return torch::stable::zero_(grad_weight);
  passes.weight_grad(g, torch::stable::contiguous(input), torch::stable::contiguous(grad_output), grad_weight,
                     allow_tf32);
  return grad_weight;
}

}  // namespace locallearn

STABLE_TORCH_LIBRARY_FRAGMENT(locallearn, m) {
  m.def(
      "locally_connected2d(Tensor input, Tensor weight, Tensor? bias, int[2] kernel_size, int[2] stride,"
      " int[2] padding, int[2] dilation, bool allow_tf32=False) -> Tensor");
  m.def(
      "locally_connected2d_transpose(Tensor grad_output, Tensor weight, int[2] input_size, int[2] kernel_size,"
      " int[2] stride, int[2] padding, int[2] dilation, bool allow_tf32=False) -> Tensor");
  m.def(
      "locally_connected2d_weight_grad(Tensor input, Tensor grad_output, int[2] kernel_size, int[2] stride,"
      " int[2] padding, int[2] dilation, bool allow_tf32=False) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(locallearn, CPU, m) {
  m.impl("locally_connected2d", TORCH_BOX(&locallearn::forward_cpu));
  m.impl("locally_connected2d_transpose", TORCH_BOX(&locallearn::transpose_cpu));
  m.impl("locally_connected2d_weight_grad", TORCH_BOX(&locallearn::weight_grad_cpu));
}
