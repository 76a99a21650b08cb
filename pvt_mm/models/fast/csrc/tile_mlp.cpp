// Fused MLP over tiles of tokens (CPU inference, fp32 / bf16), PVT v1's feed-forward half of a
// block, with its LayerNorm and residual when given:
//
//   out = [x +] gelu(norm(x) @ W1^T + b1) @ W2^T + b2     x (N, C), W1 (H, C), W2 (C, H)
//
// norm: LayerNorm over C (optional), GELU exact. Each task is one tile of token rows: the rows
// are normalised and cast to the matmul dtype in cache, the (tile x H) hidden activations are
// computed by the micro-kernel GEMM (ATen's cpublas brgemm, AMX for bf16 where the CPU has it)
// into an fp32 buffer, biased and passed through the GELU, multiplied by W2 at once, and the
// bias and residual added on the way out, so neither the normalised tokens nor the hidden
// activations (H = 4-8 C) reach memory. x and out may be fp32 while the matmuls run in bf16
// (autocast's residual stream). The weights come as column blocks (`prepare_weight`, once per
// model).
#include <vector>

#include "common.h"

namespace pvt_mm {
namespace {

// erf(x) as the rational minimax approximation x P(x^2) / Q(x^2) on [-4, 4] (the one Eigen
// and XLA use for float; |error| < 1e-6 against erf in double over the float range, checked
// by tests/test_native_mlp.py), 1 division instead of ATen's exp-based erf.
inline Vec erf_rational(Vec x) {
  x = at::vec::clamp(x, Vec(-4.f), Vec(4.f));
  const Vec x2 = x * x;
  Vec p(-2.72614225801306e-10f);
  for (float c : {2.77068142495902e-08f, -2.10102402082508e-06f, -5.69250639462346e-05f,
                  -7.34990630326855e-04f, -2.95459980854025e-03f, -1.60960333262415e-02f})
    p = at::vec::fmadd(p, x2, Vec(c));
  Vec q(-1.45660718464996e-05f);
  for (float c : {-2.13374055278905e-04f, -1.68282697438203e-03f, -7.37332916720468e-03f,
                  -1.42647390514189e-02f})
    q = at::vec::fmadd(q, x2, Vec(c));
  return x * p / q;
}

// h (rows x H, ld H, H a multiple of the vector width) <- gelu(h + bias), exact GELU
// 0.5 x (1 + erf(x / sqrt 2)).
void bias_gelu(float* h, int64_t rows, int64_t H, const float* bias) {
  const Vec half(0.5f), rsqrt2(static_cast<float>(M_SQRT1_2));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = h + r * H;
    for (int64_t i = 0; i < H; i += Vec::size()) {
      const Vec x = Vec::loadu(row + i) + Vec::loadu(bias + i);
      const Vec hx = half * x;
      at::vec::fmadd(hx, erf_rational(x * rsqrt2), hx).store(row + i);
    }
  }
}

struct Norm {  // LayerNorm over the C channels of each row; weight == nullptr: none
  const float* weight;
  const float* bias;
  float eps;
};

// rows of x (ld C, io_t) -> a (ld C, mm_t): norm (in fp32) and cast.
template <typename io_t, typename mm_t>
void prepare_rows(const io_t* x, int64_t rows, int64_t C, const Norm& norm, float* row_buf,
                  mm_t* a) {
  for (int64_t r = 0; r < rows; ++r) {
    at::vec::convert(x + r * C, row_buf, C);
    if (norm.weight) {
      const float mean = at::vec::reduce_all<float>(
          [](Vec u, Vec v) { return u + v; }, row_buf, C) / C;
      const Vec vmean(mean);
      at::vec::map<float>([vmean](Vec u) { return u - vmean; }, row_buf, row_buf, C);
      const float var = at::vec::map_reduce_all<float>(
          [](Vec u) { return u * u; }, [](Vec u, Vec v) { return u + v; }, row_buf, C) / C;
      const Vec rstd(1.f / std::sqrt(var + norm.eps));
      at::vec::map2<float>([rstd](Vec u, Vec g) { return u * rstd * g; }, row_buf, row_buf,
                           norm.weight, C);
      at::vec::map2<float>([](Vec u, Vec b) { return u + b; }, row_buf, row_buf, norm.bias, C);
    }
    at::vec::convert(row_buf, a + r * C, C);
  }
}

// o (rows x C fp32, ld ldO) + bias [+ residual rows of x] -> dst (rows x C io_t, ld C).
template <typename io_t>
void add_bias_residual(const float* o, int64_t ldO, int64_t rows, int64_t C, const float* bias,
                 const io_t* residual, float* row_buf, io_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    if (residual) {
      at::vec::convert(residual + r * C, row_buf, C);
    } else {
      std::fill(row_buf, row_buf + C, 0.f);
    }
    at::vec::map3<float>([](Vec u, Vec v, Vec b) { return u + v + b; }, row_buf, row_buf,
                         o + r * ldO, bias, C);
    at::vec::convert(row_buf, dst + r * C, C);
  }
}

// w1 (H/64, K1, 64), w2 (ceil(C/64), H', 64) column blocks (`prepare_weight`) in mm_t;
// K1 = C (fp32) or C rounded up to even (bf16, which needs an even C), H' likewise.
template <typename io_t, typename mm_t>
void tile_mlp_impl(const at::Tensor& x, const Norm& norm, const at::Tensor& w1,
                   const float* b1, const at::Tensor& w2, const float* b2, bool residual,
                   at::Tensor& out, int64_t tile) {
  constexpr bool vnni = std::is_same_v<mm_t, at::BFloat16>;
  // the rows go to the first product as they are, or through a normalised / cast copy
  const bool direct = std::is_same_v<io_t, mm_t> && norm.weight == nullptr;
  const int64_t N = x.size(0), C = x.size(1);
  const int64_t nb1 = w1.size(0), K1 = w1.size(1), H = nb1 * kBlock;
  const int64_t nb2 = w2.size(0), K2 = w2.size(1), ldO = nb2 * kBlock;
  const io_t* xp = x.data_ptr<io_t>();
  const mm_t* w1p = w1.data_ptr<mm_t>();
  const mm_t* w2p = w2.data_ptr<mm_t>();
  io_t* op = out.data_ptr<io_t>();
  const int64_t tiles = (N + tile - 1) / tile;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> hidden(tile * H), acc(tile * ldO), row_buf(C);
    std::vector<mm_t> rows_mm(direct ? 0 : tile * C);
    std::vector<mm_t> hidden_low(vnni ? tile * K2 : 0);  // bf16 copy for the 2nd product
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = t * tile, rows = std::min(tile, N - r0);
      const mm_t* a1 = reinterpret_cast<const mm_t*>(xp + r0 * C);
      if (!direct) {
        prepare_rows<io_t, mm_t>(xp + r0 * C, rows, C, norm, row_buf.data(), rows_mm.data());
        a1 = rows_mm.data();
      }
      for (int64_t j = 0; j < nb1; ++j)
        cpublas::brgemm(rows, kBlock, K1, C, kBlock, H, false, a1, w1p + j * K1 * kBlock,
                        hidden.data() + j * kBlock, vnni);
      bias_gelu(hidden.data(), rows, H, b1);
      const mm_t* a2 = reinterpret_cast<const mm_t*>(hidden.data());
      if constexpr (vnni) {
        for (int64_t r = 0; r < rows; ++r)
          at::vec::convert(hidden.data() + r * H, hidden_low.data() + r * K2, H);
        a2 = hidden_low.data();
      }
      for (int64_t j = 0; j < nb2; ++j)
        cpublas::brgemm(rows, kBlock, K2, vnni ? K2 : H, kBlock, ldO, false, a2,
                        w2p + j * K2 * kBlock, acc.data() + j * kBlock, vnni);
      add_bias_residual<io_t>(acc.data(), ldO, rows, C, b2, residual ? xp + r0 * C : nullptr,
                        row_buf.data(), op + r0 * C);
    }
    if constexpr (vnni) cpublas::brgemm_release(true);
  });
}

}  // namespace

// nn.Linear weight (out, in) -> (ceil(out / 64), in', 64) column blocks of its transpose, in
// its dtype (bf16: VNNI-packed, in' = in rounded up to even).
at::Tensor prepare_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "prepare_weight: a 2-D (out, in) weight");
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || (dtype == at::kBFloat16 && supports_bf16()),
              "prepare_weight: fp32, or bf16 where the CPU has bf16 micro-kernels");
  return pack_blocks(weight.t().unsqueeze(0)).squeeze(0);
}

// See the top of the file. x, out (N, C) contiguous, fp32 or the weights' dtype; w1, w2 from
// prepare_weight (fp32 or bf16: the matmul dtype); b1 (H,), b2 (C,) fp32; norm_weight,
// norm_bias (C,) fp32 or both empty (no norm). H must be a multiple of 64 (PVT's 4 C, 8 C are).
void tile_mlp(const at::Tensor& x, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
              double eps, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
              const at::Tensor& b2, bool residual, at::Tensor out, int64_t tile) {
  const auto io = x.scalar_type(), mm = w1.scalar_type();
  TORCH_CHECK(mm == at::kFloat || mm == at::kBFloat16, "tile_mlp: fp32 or bf16 weights");
  TORCH_CHECK(mm == at::kFloat || supports_bf16(), "tile_mlp: no bf16 micro-kernel here");
  TORCH_CHECK(io == mm || io == at::kFloat, "tile_mlp: x fp32 or the weights' dtype");
  TORCH_CHECK(x.dim() == 2 && out.dim() == 2 && w1.dim() == 3 && w2.dim() == 3,
              "tile_mlp: x, out 2-D; w1, w2 3-D blocks");
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && w1.is_contiguous() &&
                  w2.is_contiguous(), "tile_mlp: contiguous operands");
  TORCH_CHECK(w2.scalar_type() == mm && out.scalar_type() == io, "tile_mlp: one dtype");
  const int64_t N = x.size(0), C = x.size(1), H = w1.size(0) * kBlock;
  const int64_t K1 = mm == at::kFloat ? C : (C + 1) / 2 * 2;
  const int64_t K2 = mm == at::kFloat ? H : (H + 1) / 2 * 2;
  TORCH_CHECK(mm == at::kFloat || C % 2 == 0, "tile_mlp: bf16 needs an even C");
  TORCH_CHECK(w1.size(1) == K1 && w1.size(2) == kBlock, "tile_mlp: w1 blocks of a (H, C) weight");
  TORCH_CHECK(w2.size(0) == (C + kBlock - 1) / kBlock && w2.size(1) == K2 &&
                  w2.size(2) == kBlock, "tile_mlp: w2 blocks of a (C, H) weight");
  TORCH_CHECK(b1.scalar_type() == at::kFloat && b1.is_contiguous() && b1.numel() == H,
              "tile_mlp: b1 (H,) fp32 with H a multiple of 64");
  TORCH_CHECK(b2.scalar_type() == at::kFloat && b2.is_contiguous() && b2.numel() == C,
              "tile_mlp: b2 (C,) fp32");
  const bool normed = norm_weight.numel() > 0;
  TORCH_CHECK(norm_bias.numel() == (normed ? C : 0) &&
                  (!normed || (norm_weight.numel() == C &&
                               norm_weight.scalar_type() == at::kFloat &&
                               norm_bias.scalar_type() == at::kFloat &&
                               norm_weight.is_contiguous() && norm_bias.is_contiguous())),
              "tile_mlp: norm weight and bias (C,) fp32, or both empty");
  TORCH_CHECK(out.size(0) == N && out.size(1) == C && tile >= 1, "tile_mlp: out (N, C), tile");
  if (N == 0) return;
  const Norm norm{normed ? norm_weight.data_ptr<float>() : nullptr,
                  normed ? norm_bias.data_ptr<float>() : nullptr, static_cast<float>(eps)};
  const float* b1p = b1.data_ptr<float>();
  const float* b2p = b2.data_ptr<float>();
  if (mm == at::kFloat)
    tile_mlp_impl<float, float>(x, norm, w1, b1p, w2, b2p, residual, out, tile);
  else if (io == at::kFloat)
    tile_mlp_impl<float, at::BFloat16>(x, norm, w1, b1p, w2, b2p, residual, out, tile);
  else
    tile_mlp_impl<at::BFloat16, at::BFloat16>(x, norm, w1, b1p, w2, b2p, residual, out, tile);
}

}  // namespace pvt_mm
