// Fused softmax attention over tiles of queries (CPU inference, fp32 / bf16).
//
//   out[:, a] = softmax_g(q[:, a] @ kT[a] + k_bias[a]) @ v[a] + v_bias[a]     (per head a)
//
// q (N, A*K) and out (N, A*E) are token-major (rows may be strided), kT (A, K, M) and
// v (A, M, E) are contiguous, the M keys of a head are `groups` softmax groups side by side
// (PVT's folded attention, pvt_mm.models.layers.attention). Each task is one tile of query rows
// of one head: scores (tile x M, fp32) are computed by a micro-kernel GEMM (ATen's cpublas
// brgemm: oneDNN's ukernel, AMX for bf16 where the CPU has it), exponentiated in cache,
// multiplied by the values and normalised on the (tile x E) output, so the score matrix never
// leaves L2. With one group the 1/sum is applied to the output (E columns, not M).
#include <vector>

#include "common.h"

namespace pvt_mm {
namespace {

// rows x M fp32 scores (ld = ldS): + bias, exp(s - max) per group in place; inv[r, g] = 1/sum.
void exp_rows(float* s, int64_t rows, int64_t M, int64_t ldS, int64_t groups,
              const float* bias, float* inv) {
  const int64_t Mg = M / groups;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * ldS;
    if (bias) at::vec::map2<float>([](Vec a, Vec b) { return a + b; }, row, row, bias, M);
    for (int64_t g = 0; g < groups; ++g) {
      float* x = row + g * Mg;
      const float mx = at::vec::reduce_all<float>(
          [](Vec a, Vec b) { return at::vec::maximum(a, b); }, x, Mg);
      const Vec vmx(mx);
      Vec vsum(0.f);
      int64_t i = 0;
      for (; i + Vec::size() <= Mg; i += Vec::size()) {
        Vec e = (Vec::loadu(x + i) - vmx).exp_u20();
        e.store(x + i);
        vsum = vsum + e;
      }
      if (i < Mg) {
        Vec e = (Vec::loadu(x + i, Mg - i) - vmx).exp_u20();
        e.store(x + i, Mg - i);
        vsum = vsum + Vec::set(Vec(0.f), e, Mg - i);
      }
      inv[r * groups + g] = 1.f / at::vec::vec_reduce_all<float>(
          [](Vec a, Vec b) { return a + b; }, vsum);
    }
  }
}

// Several groups share the output matmul: normalise the probabilities themselves.
void normalise_groups(float* s, int64_t rows, int64_t M, int64_t ldS, int64_t groups,
                      const float* inv) {
  const int64_t Mg = M / groups;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      float* x = s + r * ldS + g * Mg;
      const Vec scale(inv[r * groups + g]);
      at::vec::map<float>([scale](Vec a) { return a * scale; }, x, x, Mg);
    }
}

// o (rows x E fp32, ld ldO) * row scale (one group) + bias -> dst (ld ldD) in scalar_t.
template <typename scalar_t>
void finish_rows(const float* o, int64_t ldO, int64_t rows, int64_t E, const float* inv,
                 bool scale_rows, const float* bias, scalar_t* dst, int64_t ldD) {
  for (int64_t r = 0; r < rows; ++r) {
    const Vec scale(scale_rows ? inv[r] : 1.f);
    const float* src = o + r * ldO;
    scalar_t* d = dst + r * ldD;
    int64_t i = 0;
    for (; i < E; i += Vec::size()) {
      const int64_t n = std::min<int64_t>(Vec::size(), E - i);
      Vec y = Vec::loadu(src + i, n) * scale;
      if (bias) y = y + Vec::loadu(bias + i, n);
      store<scalar_t>(y, d + i, n);
    }
  }
}

// fp32: the micro-kernel takes plain row-major B (keys transposed, values as they are).
void tile_attention_f32(const at::Tensor& q, const at::Tensor& kT, const at::Tensor& v,
                        at::Tensor& out, const float* k_bias, const float* v_bias,
                        int64_t groups, int64_t tile) {
  const int64_t A = kT.size(0), K = kT.size(1), M = kT.size(2), E = v.size(2);
  const int64_t N = q.size(0), ldq = q.stride(0), ldo = out.stride(0);
  const float* qp = q.data_ptr<float>();
  const float* kp = kT.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t tiles = (N + tile - 1) / tile;
  at::parallel_for(0, tiles * A, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(tile * M), inv(tile * groups), acc(tile * E);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t a = task % A, r0 = (task / A) * tile, rows = std::min(tile, N - r0);
      cpublas::brgemm(rows, M, K, ldq, M, M, false, qp + r0 * ldq + a * K, kp + a * K * M,
                      scores.data(), false);
      exp_rows(scores.data(), rows, M, M, groups, k_bias ? k_bias + a * M : nullptr,
               inv.data());
      if (groups > 1) normalise_groups(scores.data(), rows, M, M, groups, inv.data());
      cpublas::brgemm(rows, E, M, M, E, E, false, scores.data(), vp + a * M * E, acc.data(),
                      false);
      finish_rows<float>(acc.data(), E, rows, E, inv.data(), groups == 1,
                         v_bias ? v_bias + a * E : nullptr, op + r0 * ldo + a * E, ldo);
    }
  });
}

// bf16: both B operands VNNI-packed in 64-column blocks; scores and accumulators fp32, the
// probabilities rounded to bf16 for the second product (as PyTorch's own CPU flash attention).
void tile_attention_bf16(const at::Tensor& q, const at::Tensor& kT, const at::Tensor& v,
                         at::Tensor& out, const float* k_bias, const float* v_bias,
                         int64_t groups, int64_t tile) {
  using bf16 = at::BFloat16;
  const int64_t A = kT.size(0), K = kT.size(1), M = kT.size(2), E = v.size(2);
  const int64_t N = q.size(0), ldq = q.stride(0), ldo = out.stride(0);
  const at::Tensor kB = pack_blocks(kT);  // (A, nbM, K, 64)
  const at::Tensor vB = pack_blocks(v);   // (A, nbE, Mp, 64)
  const int64_t nbM = kB.size(1), nbE = vB.size(1), Mp = vB.size(2);
  const int64_t ldS = nbM * kBlock, ldAcc = nbE * kBlock;
  const bf16* qp = q.data_ptr<bf16>();
  const bf16* kp = kB.data_ptr<bf16>();
  const bf16* vp = vB.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t tiles = (N + tile - 1) / tile;
  at::parallel_for(0, tiles * A, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(tile * ldS), inv(tile * groups), acc(tile * ldAcc);
    std::vector<bf16> probs(tile * Mp);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t a = task % A, r0 = (task / A) * tile, rows = std::min(tile, N - r0);
      for (int64_t j = 0; j < nbM; ++j)
        cpublas::brgemm(rows, kBlock, K, ldq, kBlock, ldS, false, qp + r0 * ldq + a * K,
                        kp + (a * nbM + j) * K * kBlock, scores.data() + j * kBlock, true);
      exp_rows(scores.data(), rows, M, ldS, groups, k_bias ? k_bias + a * M : nullptr,
               inv.data());
      if (groups > 1) normalise_groups(scores.data(), rows, M, ldS, groups, inv.data());
      for (int64_t r = 0; r < rows; ++r) {
        at::vec::convert(scores.data() + r * ldS, probs.data() + r * Mp, M);
        for (int64_t j = M; j < Mp; ++j) probs[r * Mp + j] = bf16(0.f);
      }
      for (int64_t j = 0; j < nbE; ++j)
        cpublas::brgemm(rows, kBlock, Mp, Mp, kBlock, ldAcc, false, probs.data(),
                        vp + (a * nbE + j) * Mp * kBlock, acc.data() + j * kBlock, true);
      finish_rows<bf16>(acc.data(), ldAcc, rows, E, inv.data(), groups == 1,
                        v_bias ? v_bias + a * E : nullptr, op + r0 * ldo + a * E, ldo);
    }
    cpublas::brgemm_release(true);
  });
}

}  // namespace

bool supports_bf16() { return cpublas::could_pack(at::kBFloat16); }

// See the top of the file. k_bias: (A, M) fp32 or empty; v_bias: (A * E,) fp32 or empty.
void tile_attention(const at::Tensor& q, const at::Tensor& kT, const at::Tensor& v,
                    at::Tensor out, const at::Tensor& k_bias, const at::Tensor& v_bias,
                    int64_t groups, int64_t tile) {
  TORCH_CHECK(q.dim() == 2 && out.dim() == 2 && kT.dim() == 3 && v.dim() == 3,
              "tile_attention: q, out 2-D; kT, v 3-D");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "tile_attention: fp32 or bf16");
  TORCH_CHECK(kT.scalar_type() == dtype && v.scalar_type() == dtype &&
                  out.scalar_type() == dtype, "tile_attention: one dtype");
  TORCH_CHECK(kT.is_contiguous() && v.is_contiguous(), "tile_attention: kT, v contiguous");
  TORCH_CHECK(q.stride(1) == 1 && out.stride(1) == 1, "tile_attention: unit column stride");
  const int64_t A = kT.size(0), K = kT.size(1), M = kT.size(2), E = v.size(2);
  TORCH_CHECK(v.size(0) == A && v.size(1) == M, "tile_attention: v (A, M, E)");
  TORCH_CHECK(q.size(1) == A * K && out.size(1) == A * E && out.size(0) == q.size(0),
              "tile_attention: q (N, A*K), out (N, A*E)");
  TORCH_CHECK(groups >= 1 && M % groups == 0 && tile >= 1, "tile_attention: groups, tile");
  TORCH_CHECK(dtype == at::kFloat || supports_bf16(), "tile_attention: no bf16 micro-kernel here");
  TORCH_CHECK(dtype == at::kFloat || K % 2 == 0, "tile_attention: bf16 needs an even K");
  TORCH_CHECK(!k_bias.defined() || k_bias.numel() == 0 ||
                  (k_bias.scalar_type() == at::kFloat && k_bias.numel() == A * M &&
                   k_bias.is_contiguous()), "tile_attention: k_bias (A, M) fp32");
  TORCH_CHECK(!v_bias.defined() || v_bias.numel() == 0 ||
                  (v_bias.scalar_type() == at::kFloat && v_bias.numel() == A * E &&
                   v_bias.is_contiguous()), "tile_attention: v_bias (A * E) fp32");
  const float* kb = k_bias.defined() && k_bias.numel() ? k_bias.data_ptr<float>() : nullptr;
  const float* vb = v_bias.defined() && v_bias.numel() ? v_bias.data_ptr<float>() : nullptr;
  if (q.size(0) == 0) return;
  if (dtype == at::kFloat)
    tile_attention_f32(q, kT, v, out, kb, vb, groups, tile);
  else
    tile_attention_bf16(q, kT, v, out, kb, vb, groups, tile);
}

}  // namespace pvt_mm
