// Shared by pvt_mm's native CPU inference kernels (tile_attention.cpp, tile_mlp.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cstdint>

namespace pvt_mm {

using Vec = at::vec::Vectorized<float>;
namespace cpublas = at::native::cpublas;

constexpr int64_t kBlock = 64;  // columns of one B block (the VNNI pack ukernel's only width)

// bf16 runs only where oneDNN's micro-kernel takes VNNI-packed operands (AVX512-BF16 / AMX).
bool supports_bf16();

// (A, R, C) -> (A, ceil(C / 64), R', 64): column blocks of B as the micro-kernel reads them,
// zero padded; bf16 blocks are VNNI-packed with R' = R rounded up to even, fp32 ones plain.
inline at::Tensor pack_blocks(const at::Tensor& b) {
  const bool vnni = b.scalar_type() == at::kBFloat16;
  const int64_t A = b.size(0), R = b.size(1), C = b.size(2);
  const int64_t Rp = vnni ? (R + 1) / 2 * 2 : R, nb = (C + kBlock - 1) / kBlock;
  at::Tensor padded = at::zeros({A, Rp, nb * kBlock}, b.options());
  padded.narrow(1, 0, R).narrow(2, 0, C).copy_(b);
  at::Tensor blocks = padded.view({A, Rp, nb, kBlock}).permute({0, 2, 1, 3}).contiguous();
  if (!vnni) return blocks;
  at::Tensor packed = at::empty_like(blocks);
  for (int64_t i = 0; i < A * nb; ++i)
    cpublas::pack(Rp, kBlock, kBlock, kBlock, at::kBFloat16, at::kBFloat16,
                  blocks.data_ptr<at::BFloat16>() + i * Rp * kBlock,
                  packed.data_ptr<at::BFloat16>() + i * Rp * kBlock);
  return packed;
}

// Vectorised store of n <= Vec::size() floats as scalar_t (fp32 or bf16).
template <typename scalar_t>
inline void store(Vec y, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    y.store(dst, n);
  } else {
    float tmp[Vec::size()];
    y.store(tmp, n);
    at::vec::convert(tmp, dst, n);
  }
}

}  // namespace pvt_mm
