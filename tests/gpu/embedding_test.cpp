// cuda::embedding_forward / embedding_backward against the CPU twins.
//
// Every comparison here is bit for bit, on purpose. The forward is one FP32 add rounded once on both
// sides. The backward sums are fixed by embedding.h as one sequence of FP32 additions (old gradient, then
// the rows in ascending order) rounded once; the CUDA kernels and the CPU twin perform that same sequence,
// and FP32 addition is correctly rounded on both, so any difference is a bug (a lost or repeated row, a
// wrong order, a race between blocks), not noise. The CPU twin groups the rows itself from the tokens, so
// the groups the CUDA side is given (make_token_groups) are checked as well.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/embedding.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Shape {
  int rows, T, C, vocab;
};
std::string shape_tag(const Shape& s) {
  return "rows=" + std::to_string(s.rows) + " T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) +
         " vocab=" + std::to_string(s.vocab);
}
// C = 37 and 129 take the single-element path; 24, 64, 768 the 16-byte packs; 100 rows with T = 32 end in a
// partial sequence; the last is GPT-2's vocabulary and width over a 4 x 1024 batch.
const Shape kShapes[] = {{1, 1, 1, 1},       {37, 8, 37, 11},     {100, 32, 24, 5},
                         {256, 64, 64, 1000}, {96, 96, 129, 3},    {4096, 1024, 768, 50304}};

enum class Tokens { Uniform, Skewed, OneToken };
const char* tokens_name(Tokens k) { return k == Tokens::Uniform ? "uniform" : k == Tokens::Skewed ? "skewed" : "one"; }

// Skewed: a quarter of the rows on one hot token, a quarter on 8 warm ones, the rest uniform, so groups
// range from one row to ~rows / 4. OneToken: every row the same token, a single group of all rows.
std::vector<int32_t> make_tokens(Rng& r, int rows, int vocab, Tokens kind) {
  std::vector<int32_t> t(static_cast<size_t>(rows));
  const int32_t hot = int32_t(r.below(uint64_t(vocab)));
  std::vector<int32_t> warm(8);
  for (auto& w : warm) w = int32_t(r.below(uint64_t(vocab)));
  for (auto& v : t) {
    const uint64_t u = r.below(4);
    if (kind == Tokens::OneToken || (kind == Tokens::Skewed && u == 0))
      v = hot;
    else if (kind == Tokens::Skewed && u == 1)
      v = warm[r.below(8)];
    else
      v = int32_t(r.below(uint64_t(vocab)));
  }
  return t;
}

class EmbeddingGpu : public GpuTest, public ::testing::WithParamInterface<DType> {
 protected:
  // Runs the CUDA backward on device copies of the inputs and returns (dwte, dwpe).
  std::pair<std::vector<uint8_t>, std::vector<uint8_t>> cuda_backward(const std::vector<int32_t>& tok,
                                                                      const TokenGroups& g,
                                                                      const std::vector<uint8_t>& dout,
                                                                      const std::vector<uint8_t>& dwte0,
                                                                      const std::vector<uint8_t>& dwpe0, DType t,
                                                                      const Shape& s) {
    DeviceBuffer dtok = to_device(tok), dord = to_device(g.order), dst = to_device(g.starts), duq = to_device(g.uniq);
    DeviceBuffer ddout = to_device(dout), ddwte = to_device(dwte0), ddwpe = to_device(dwpe0);
    cuda::embedding_backward(dtok.as<int32_t>(), dord.as<int32_t>(), dst.as<int32_t>(), duq.as<int32_t>(),
                             g.num_unique(), ddout.get(), t, ddwte.get(), ddwpe.get(), s.rows, s.T, s.C, stream());
    return {to_host<uint8_t>(ddwte, dwte0.size()), to_host<uint8_t>(ddwpe, dwpe0.size())};
  }
};

TEST_P(EmbeddingGpu, ForwardMatchesCpu) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  Rng r = fresh_rng();
  for (const Shape& s : kShapes) {
    for (Tokens kind : {Tokens::Uniform, Tokens::Skewed}) {
      SCOPED_TRACE(shape_tag(s) + " tokens=" + tokens_name(kind));
      const size_t nc = size_t(s.C);
      const std::vector<int32_t> tok = make_tokens(r, s.rows, s.vocab, kind);
      const std::vector<uint8_t> wte = random_buffer(r, t, size_t(s.vocab) * nc);
      const std::vector<uint8_t> wpe = random_buffer(r, t, size_t(s.T) * nc);
      std::vector<uint8_t> ref(size_t(s.rows) * nc * es);
      cpu::embedding_forward(tok.data(), wte.data(), wpe.data(), t, ref.data(), s.rows, s.T, s.C);

      DeviceBuffer dtok = to_device(tok), dwte = to_device(wte), dwpe = to_device(wpe), dout(ref.size());
      dout.fill(0xFF, stream());  // NaN in every dtype: an unwritten element cannot pass
      cuda::embedding_forward(dtok.as<int32_t>(), dwte.get(), dwpe.get(), t, dout.get(), s.rows, s.T, s.C, stream());
      EXPECT_TRUE(same_bits("out", to_host<uint8_t>(dout, ref.size()), ref, t));
    }
  }
}

// Tables that start one element into their allocation are not 16-byte aligned, which sends the kernels
// down the single-element path even where C allows packs.
TEST_P(EmbeddingGpu, MisalignedBuffersMatchCpu) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  Rng r = fresh_rng();
  const Shape s{300, 50, 64, 40};
  const size_t nc = size_t(s.C);
  const std::vector<int32_t> tok = make_tokens(r, s.rows, s.vocab, Tokens::Skewed);
  const std::vector<uint8_t> wte = random_buffer(r, t, size_t(s.vocab) * nc), wpe = random_buffer(r, t, size_t(s.T) * nc);
  const std::vector<uint8_t> dout = random_buffer(r, t, size_t(s.rows) * nc);
  const std::vector<uint8_t> dwte0 = random_buffer(r, t, size_t(s.vocab) * nc), dwpe0 = random_buffer(r, t, size_t(s.T) * nc);
  std::vector<uint8_t> ref_out(dout.size()), ref_dwte = dwte0, ref_dwpe = dwpe0;
  const TokenGroups g = make_token_groups(tok.data(), s.rows, s.vocab);
  cpu::embedding_forward(tok.data(), wte.data(), wpe.data(), t, ref_out.data(), s.rows, s.T, s.C);
  cpu::embedding_backward(tok.data(), nullptr, nullptr, nullptr, 0, dout.data(), t, ref_dwte.data(), ref_dwpe.data(),
                          s.rows, s.T, s.C);

  DeviceBuffer dtok = to_device(tok), dord = to_device(g.order), dst = to_device(g.starts), duq = to_device(g.uniq);
  DeviceBuffer bwte(wte.size() + es), bwpe(wpe.size() + es), bout(dout.size() + es), bdout(dout.size() + es);
  DeviceBuffer bdwte(dwte0.size() + es), bdwpe(dwpe0.size() + es);
  bwte.upload(wte.data(), wte.size(), stream(), es);
  bwpe.upload(wpe.data(), wpe.size(), stream(), es);
  bdout.upload(dout.data(), dout.size(), stream(), es);
  bdwte.upload(dwte0.data(), dwte0.size(), stream(), es);
  bdwpe.upload(dwpe0.data(), dwpe0.size(), stream(), es);
  bout.fill(0xFF, stream());
  cuda::embedding_forward(dtok.as<int32_t>(), bwte.at(es), bwpe.at(es), t, bout.at(es), s.rows, s.T, s.C, stream());
  cuda::embedding_backward(dtok.as<int32_t>(), dord.as<int32_t>(), dst.as<int32_t>(), duq.as<int32_t>(),
                           g.num_unique(), bdout.at(es), t, bdwte.at(es), bdwpe.at(es), s.rows, s.T, s.C, stream());
  std::vector<uint8_t> out(dout.size()), dwte(dwte0.size()), dwpe(dwpe0.size());
  bout.download(out.data(), out.size(), stream(), es);
  bdwte.download(dwte.data(), dwte.size(), stream(), es);
  bdwpe.download(dwpe.data(), dwpe.size(), stream(), es);
  EXPECT_TRUE(same_bits("out", out, ref_out, t));
  EXPECT_TRUE(same_bits("dwte", dwte, ref_dwte, t));
  EXPECT_TRUE(same_bits("dwpe", dwpe, ref_dwpe, t));
}

TEST_P(EmbeddingGpu, BackwardMatchesCpuBitForBit) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (const Shape& s : kShapes) {
    for (Tokens kind : {Tokens::Uniform, Tokens::Skewed, Tokens::OneToken}) {
      SCOPED_TRACE(shape_tag(s) + " tokens=" + tokens_name(kind));
      const size_t nc = size_t(s.C);
      const std::vector<int32_t> tok = make_tokens(r, s.rows, s.vocab, kind);
      const std::vector<uint8_t> dout = random_buffer(r, t, size_t(s.rows) * nc);
      // Nonzero old gradients: the kernels must add to them, and leave untouched the vocabulary rows no
      // token of the batch uses (almost all of them in the 50304-row case).
      const std::vector<uint8_t> dwte0 = random_buffer(r, t, size_t(s.vocab) * nc);
      const std::vector<uint8_t> dwpe0 = random_buffer(r, t, size_t(s.T) * nc);
      std::vector<uint8_t> ref_dwte = dwte0, ref_dwpe = dwpe0;
      cpu::embedding_backward(tok.data(), nullptr, nullptr, nullptr, 0, dout.data(), t, ref_dwte.data(),
                              ref_dwpe.data(), s.rows, s.T, s.C);
      const TokenGroups g = make_token_groups(tok.data(), s.rows, s.vocab);
      const auto [dwte, dwpe] = cuda_backward(tok, g, dout, dwte0, dwpe0, t, s);
      EXPECT_TRUE(same_bits("dwte", dwte, ref_dwte, t));
      EXPECT_TRUE(same_bits("dwpe", dwpe, ref_dwpe, t));
    }
  }
}

// Two runs on the same inputs give the same bits: no atomics, no dependence on block scheduling. The GPT-2
// shape with skewed tokens gives thousands of concurrent blocks of very different lengths.
TEST_P(EmbeddingGpu, BackwardIsDeterministic) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  const Shape s{4096, 1024, 768, 50304};
  const size_t nc = size_t(s.C);
  const std::vector<int32_t> tok = make_tokens(r, s.rows, s.vocab, Tokens::Skewed);
  const std::vector<uint8_t> dout = random_buffer(r, t, size_t(s.rows) * nc);
  const std::vector<uint8_t> dwte0 = random_buffer(r, t, size_t(s.vocab) * nc);
  const std::vector<uint8_t> dwpe0 = random_buffer(r, t, size_t(s.T) * nc);
  const TokenGroups g = make_token_groups(tok.data(), s.rows, s.vocab);
  const auto first = cuda_backward(tok, g, dout, dwte0, dwpe0, t, s);
  const auto second = cuda_backward(tok, g, dout, dwte0, dwpe0, t, s);
  EXPECT_TRUE(first.first == second.first) << "dwte differs between runs";
  EXPECT_TRUE(first.second == second.second) << "dwpe differs between runs";
  EXPECT_FALSE(first.first == dwte0) << "dwte unchanged";
}

TEST_P(EmbeddingGpu, BadArgumentsThrow) {
  const DType t = GetParam();
  DeviceBuffer b(1024);
  const int32_t* ip = b.as<int32_t>();
  EXPECT_THROW(cuda::embedding_forward(ip, nullptr, b.get(), t, b.get(), 2, 2, 2, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::embedding_forward(ip, b.get(), b.get(), t, b.get(), 2, 0, 2, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::embedding_backward(ip, ip, ip, ip, 0, b.get(), t, b.get(), b.get(), 2, 2, 2, stream()),
               std::invalid_argument);  // a non-empty batch has at least one group
  EXPECT_THROW(cuda::embedding_backward(ip, ip, ip, ip, 3, b.get(), t, b.get(), b.get(), 2, 2, 2, stream()),
               std::invalid_argument);  // more groups than rows
  EXPECT_THROW(cuda::embedding_backward(ip, nullptr, ip, ip, 1, b.get(), t, b.get(), b.get(), 2, 2, 2, stream()),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EmbeddingGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace mpt::test
