// The Python module of pvt_mm's native CPU inference kernels (built by models/layers/native.py).
// Only torch's pybind11 type casters: torch/extension.h (the whole C++ frontend) took 49 s of the
// build's ~55 on 2 cores, this ~18.
#include <torch/csrc/utils/pybind.h>

namespace pvt_mm {
bool supports_bf16();
void tile_attention(const at::Tensor& q, const at::Tensor& kT, const at::Tensor& v,
                    at::Tensor out, const at::Tensor& k_bias, const at::Tensor& v_bias,
                    int64_t groups, int64_t tile);
at::Tensor prepare_weight(const at::Tensor& weight);
void tile_mlp(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
              double eps, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
              const at::Tensor& b2, bool residual, at::Tensor out, int64_t tile);
}  // namespace pvt_mm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tile_attention", &pvt_mm::tile_attention, "fused softmax attention over query tiles");
  m.def("prepare_weight", &pvt_mm::prepare_weight, "nn.Linear weight -> tile_mlp blocks");
  m.def("tile_mlp", &pvt_mm::tile_mlp, "[x +] fc2(GELU(fc1([LayerNorm] x))) over token tiles");
  m.def("supports_bf16", &pvt_mm::supports_bf16, "bf16 micro-kernels available");
}
