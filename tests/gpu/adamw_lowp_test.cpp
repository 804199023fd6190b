// cuda::adamw_lowp against cpu::adamw_lowp over several consecutive steps (codes and scales feed back).
//
// Tolerance: none, bit for bit. Both sides evaluate kernels/adamw_lowp_math.h, the same FP32 operations
// in the same order with explicitly rounded intrinsics on the GPU (no FMA contraction; IEEE division and
// square root; rint rounds half to even on both), and a block maximum is exact in any order. So master,
// the model-dtype parameters, the int8 / bf16 codes and the FP32 scales must all be identical; a single
// code off by one would already mean the two sides rounded differently (and ZeRO ranks mixing CPU and GPU
// arithmetic would drift apart).
#include <algorithm>
#include <cmath>

#include "kernels/adamw_lowp.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Layout {
  std::vector<AdamWSegment> segs;
  std::vector<AdamWQBlock> blocks;
  int64_t store = 0, flat = 0, max_len = 1;
};

// nb blocks of up to `block` elements (most full), each tiled by 1..3 segments with gaps in the flat buffer.
Layout make_layout(Rng& r, int nb, int64_t block) {
  Layout L;
  int64_t off = 5;
  for (int b = 0; b < nb; ++b) {
    AdamWQBlock q;
    q.store = L.store;
    q.seg_begin = int32_t(L.segs.size());
    q.len = b % 4 == 3 ? 1 + int64_t(r.below(uint64_t(block))) : block;
    int64_t left = q.len;
    while (left > 0) {
      AdamWSegment s;
      s.store = q.store + (q.len - left);
      s.len = q.nsegs == 2 ? left : std::min(left, 1 + int64_t(r.below(uint64_t(q.len))));
      s.grad_off = off;
      s.param_off = off + 1;
      s.decay = int(r.below(2));
      L.segs.push_back(s);
      q.nsegs++;
      left -= s.len;
      off += s.len + int64_t(r.below(3));
    }
    L.max_len = std::max(L.max_len, q.len);
    L.blocks.push_back(q);
    L.store += q.len;
  }
  L.flat = off + 1;
  return L;
}

struct Case { StateDType sd; DType t; };
class AdamWLowpGpu : public GpuTest, public ::testing::WithParamInterface<Case> {};

TEST_P(AdamWLowpGpu, StepsMatchCpuBitForBit) {
  const auto [sd, t] = GetParam();
  Rng r = fresh_rng();
  const struct { int nb; int64_t block; } shapes[] = {{1, 64}, {37, 64}, {50, 256}, {9, kQBlock}, {2100, kQBlock}};
  for (const auto& sh : shapes) {
    SCOPED_TRACE("blocks " + std::to_string(sh.nb) + " of " + std::to_string(sh.block));
    const Layout L = make_layout(r, sh.nb, sh.block);
    const size_t n = size_t(L.store), sb = sd == StateDType::BF16 ? 2 : 1;
    std::vector<float> master(n), mf(n), vf(n), scales(2 * L.blocks.size(), 0.f);
    for (size_t i = 0; i < n; ++i) {
      master[i] = r.uniform(-1.f, 1.f);
      mf[i] = 0.01f * r.normal() * std::pow(10.f, r.uniform(-4.f, 0.f));
      vf[i] = 1e-4f * r.uniform() * std::pow(10.f, r.uniform(-6.f, 0.f));
    }
    std::vector<uint8_t> m(n * sb), v(n * sb);
    cpu::lowp_state_from_f32(mf.data(), vf.data(), sd, L.blocks.data(), int(L.blocks.size()), m.data(), v.data(),
                             scales.data());
    DeviceBuffer dmaster = to_device(master), dm = to_device(m), dv = to_device(v), dsc = to_device(scales);
    DeviceBuffer dsegs = to_device(L.segs), dblocks = to_device(L.blocks);
    DeviceBuffer dparam(size_t(L.flat) * dtype_size(t));
    std::vector<uint8_t> param(size_t(L.flat) * dtype_size(t), 0xFF);
    dparam.fill(0xFF, stream());
    for (int step = 1; step <= 3; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      AdamWHyper h;
      h.lr = 3e-3f;
      h.beta2 = step == 2 ? 0.999f : 0.95f;
      h.weight_decay = 0.1f;
      h.bc1 = 1.f - std::pow(h.beta1, float(step));
      h.bc2 = 1.f - std::pow(h.beta2, float(step));
      h.grad_coef = r.uniform(0.25f, 1.f);
      std::vector<uint8_t> grad(size_t(L.flat) * dtype_size(t));
      for (size_t i = 0; i < size_t(L.flat); ++i)
        store_elem(grad.data(), t, i, r.uniform(-300.f, 300.f) * std::ldexp(1.f, -int(r.below(12))));
      const float unscale = 1.f / 2048.f;
      cpu::adamw_lowp(master.data(), m.data(), v.data(), sd == StateDType::I8 ? scales.data() : nullptr, sd,
                      grad.data(), t, unscale, param.data(), t, L.segs.data(), L.blocks.data(), int(L.blocks.size()), h);
      DeviceBuffer dgrad = to_device(grad);
      cuda::adamw_lowp(dmaster.as<float>(), dm.get(), dv.get(), sd == StateDType::I8 ? dsc.as<float>() : nullptr, sd,
                       dgrad.get(), t, unscale, dparam.get(), t, dsegs.as<AdamWSegment>(), dblocks.as<AdamWQBlock>(),
                       int(L.blocks.size()), L.max_len, h, stream());
      sync();
      auto bytes = [](const std::vector<float>& f) {
        std::vector<uint8_t> b(f.size() * 4);
        std::memcpy(b.data(), f.data(), b.size());
        return b;
      };
      EXPECT_TRUE(same_bits("master", bytes(to_host<float>(dmaster, n)), bytes(master), DType::F32));
      EXPECT_TRUE(same_bits("params", to_host<uint8_t>(dparam, param.size()), param, t));
      EXPECT_EQ(to_host<uint8_t>(dm, m.size()), m) << "m codes differ";
      EXPECT_EQ(to_host<uint8_t>(dv, v.size()), v) << "v codes differ";
      if (sd == StateDType::I8) {
        EXPECT_TRUE(same_bits("scales", bytes(to_host<float>(dsc, scales.size())), bytes(scales), DType::F32));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(States, AdamWLowpGpu,
                         ::testing::Values(Case{StateDType::I8, DType::F32}, Case{StateDType::I8, DType::BF16},
                                           Case{StateDType::I8, DType::F16}, Case{StateDType::BF16, DType::F32},
                                           Case{StateDType::BF16, DType::BF16}),
                         [](const auto& info) {
                           return std::string(state_dtype_name(info.param.sd)) + "_" + dtype_name(info.param.t);
                         });

}  // namespace
}  // namespace mpt::test
