// overlap-probe: how much does each way of moving 25 MiB bf16 buckets slow a bf16 GEMM loop running beside
// it on another stream? The measurement behind zero.symmetric_memory. Two ranks, one GPU each:
//   mpirun -np 2 build/overlap-probe
// Per variant (NCCL's ordinary kernels on cudaMalloc memory; symmetric windows with the default, efficiency
// and zero-CTA policies, where the zero-CTA all-gather runs on the copy engines): 60 collectives alone, the
// GEMM loop alone, and both at once (the GEMMs' slowdown is what overlapped communication costs compute).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#define CK(x) do { auto e_ = (x); if (e_ != cudaSuccess) { printf("cuda %s line %d\n", cudaGetErrorString(e_), __LINE__); MPI_Abort(MPI_COMM_WORLD, 1);} } while (0)
#define NK(x) do { auto e_ = (x); if (e_ != ncclSuccess) { printf("nccl %s line %d\n", ncclGetErrorString(e_), __LINE__); MPI_Abort(MPI_COMM_WORLD, 1);} } while (0)

static int rank_, world_;
static cudaStream_t cs, ms;
static cublasHandle_t blas;
static void *A, *B, *C;
static const int M = 16384, N = 3072, K = 768, GEMMS = 40;
static const size_t BUCKET = 25u << 20;  // bytes of one bucket (bf16)
static const int OPS = 60;

static void gemms() {
  float one = 1, zero = 0;
  for (int i = 0; i < GEMMS; ++i)
    cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, B, CUDA_R_16BF, N, A, CUDA_R_16BF, K, &zero, C,
                 CUDA_R_16BF, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

struct Variant {
  std::string name;
  ncclComm_t comm;
  char* buf;     // one bucket, reused by every op
  char* stage;
  int op;        // 0 RS, 1 AG (in place), 2 alltoall, 3 AR
};

static void comm_ops(const Variant& v) {
  const size_t n = BUCKET / 2;  // bf16 elements of a bucket
  const size_t part = n / size_t(world_);
  for (int i = 0; i < OPS; ++i) {
    if (v.op == 0) NK(ncclReduceScatter(v.buf, v.buf + size_t(rank_) * part * 2, part, ncclBfloat16, ncclSum, v.comm, ms));
    else if (v.op == 1) NK(ncclAllGather(v.buf + size_t(rank_) * part * 2, v.buf, part, ncclBfloat16, v.comm, ms));
    else if (v.op == 2) NK(ncclAlltoAll(v.buf, v.stage, part, ncclBfloat16, v.comm, ms));
    else NK(ncclAllReduce(v.buf, v.buf, n, ncclBfloat16, ncclSum, v.comm, ms));
  }
}

static float timed(bool g, const Variant* v) {
  cudaEvent_t a, b, c, d;
  CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); CK(cudaEventCreate(&c)); CK(cudaEventCreate(&d));
  CK(cudaDeviceSynchronize());
  MPI_Barrier(MPI_COMM_WORLD);
  CK(cudaEventRecord(a, cs));
  CK(cudaEventRecord(c, ms));
  if (v) comm_ops(*v);
  if (g) gemms();
  CK(cudaEventRecord(b, cs));
  CK(cudaEventRecord(d, ms));
  CK(cudaDeviceSynchronize());
  float t1 = 0, t2 = 0;
  CK(cudaEventElapsedTime(&t1, a, b));
  CK(cudaEventElapsedTime(&t2, c, d));
  return g ? t1 : t2;
}

static void measure(const Variant& v, float gemm_alone) {
  float comm_alone = 1e9, both_g = 1e9;
  for (int r = 0; r < 3; ++r) comm_alone = std::min(comm_alone, timed(false, &v));
  float both_c = 0;
  for (int r = 0; r < 3; ++r) {
    cudaEvent_t a, b, c, d;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b)); CK(cudaEventCreate(&c)); CK(cudaEventCreate(&d));
    CK(cudaDeviceSynchronize());
    MPI_Barrier(MPI_COMM_WORLD);
    CK(cudaEventRecord(c, ms));
    comm_ops(v);
    CK(cudaEventRecord(d, ms));
    CK(cudaEventRecord(a, cs));
    gemms();
    CK(cudaEventRecord(b, cs));
    CK(cudaDeviceSynchronize());
    float t1, t2;
    CK(cudaEventElapsedTime(&t1, a, b));
    CK(cudaEventElapsedTime(&t2, c, d));
    if (t1 < both_g) { both_g = t1; both_c = t2; }
  }
  if (rank_ == 0)
    printf("%-34s comm alone %7.3f ms (%6.1f GB/s per op-bucket)  gemm alone %7.3f  gemm with comm %7.3f (+%5.3f ms, +%4.1f%%)  comm with gemm %7.3f\n",
           v.name.c_str(), comm_alone, double(BUCKET) * OPS / comm_alone / 1e6, gemm_alone, both_g, both_g - gemm_alone,
           100.0 * (both_g - gemm_alone) / gemm_alone, both_c);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_);
  CK(cudaSetDevice(rank_));
  CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&ms, cudaStreamNonBlocking));
  cublasCreate(&blas);
  cublasSetStream(blas, cs);
  CK(cudaMalloc(&A, size_t(M) * K * 2)); CK(cudaMalloc(&B, size_t(K) * N * 2)); CK(cudaMalloc(&C, size_t(M) * N * 2));
  CK(cudaMemset(A, 0, size_t(M) * K * 2)); CK(cudaMemset(B, 0, size_t(K) * N * 2));

  auto make = [&](int policy) {
    ncclUniqueId id;
    if (rank_ == 0) NK(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    if (policy >= 0) cfg.CTAPolicy = policy;
    ncclComm_t c;
    NK(ncclCommInitRankConfig(&c, world_, id, rank_, &cfg));
    return c;
  };
  ncclComm_t cdef = make(-1), ceff = make(NCCL_CTA_POLICY_EFFICIENCY), czero = make(NCCL_CTA_POLICY_ZERO);

  char *plain, *plain_stage;
  CK(cudaMalloc(&plain, BUCKET)); CK(cudaMalloc(&plain_stage, BUCKET));
  CK(cudaMemset(plain, 0, BUCKET));
  void *wbuf, *wstage;
  NK(ncclMemAlloc(&wbuf, BUCKET));
  NK(ncclMemAlloc(&wstage, BUCKET));
  CK(cudaMemset(wbuf, 0, BUCKET));
  ncclWindow_t w[6];
  NK(ncclCommWindowRegister(cdef, wbuf, BUCKET, &w[0], NCCL_WIN_COLL_SYMMETRIC));
  NK(ncclCommWindowRegister(cdef, wstage, BUCKET, &w[1], NCCL_WIN_COLL_SYMMETRIC));
  NK(ncclCommWindowRegister(ceff, wbuf, BUCKET, &w[2], NCCL_WIN_COLL_SYMMETRIC));
  NK(ncclCommWindowRegister(ceff, wstage, BUCKET, &w[3], NCCL_WIN_COLL_SYMMETRIC));
  NK(ncclCommWindowRegister(czero, wbuf, BUCKET, &w[4], NCCL_WIN_COLL_SYMMETRIC));
  NK(ncclCommWindowRegister(czero, wstage, BUCKET, &w[5], NCCL_WIN_COLL_SYMMETRIC));

  // Warm-up (GEMM heuristics, NCCL connections).
  for (int i = 0; i < 2; ++i) { gemms(); }
  std::vector<Variant> vs = {
      {"default RS plain", cdef, plain, plain_stage, 0},
      {"default AG plain", cdef, plain, plain_stage, 1},
      {"default AR plain", cdef, plain, plain_stage, 3},
      {"default RS window", cdef, (char*)wbuf, (char*)wstage, 0},
      {"default AG window", cdef, (char*)wbuf, (char*)wstage, 1},
      {"efficiency RS window", ceff, (char*)wbuf, (char*)wstage, 0},
      {"efficiency AG window", ceff, (char*)wbuf, (char*)wstage, 1},
      {"zero AG window (copy engines)", czero, (char*)wbuf, (char*)wstage, 1},
      {"zero alltoall window", czero, (char*)wbuf, (char*)wstage, 2},
      {"zero RS window", czero, (char*)wbuf, (char*)wstage, 0},
      {"default alltoall plain", cdef, plain, plain_stage, 2},
  };
  for (auto& v : vs) { comm_ops(v); CK(cudaDeviceSynchronize()); }
  float g = 1e9;
  for (int r = 0; r < 5; ++r) g = std::min(g, timed(true, nullptr));
  if (rank_ == 0) printf("GEMM loop alone: %.3f ms (%d x %dx%dx%d bf16, %.0f TFLOP/s); bucket %zu MiB x %d ops\n", g, GEMMS, M,
                         N, K, 2.0 * M * N * K * GEMMS / g / 1e9, BUCKET >> 20, OPS);
  for (int rep = 0; rep < 2; ++rep)
    for (auto& v : vs) measure(v, g);
  for (int i = 0; i < 6; ++i) NK(ncclCommWindowDeregister(i < 2 ? cdef : i < 4 ? ceff : czero, w[i]));
  ncclCommDestroy(cdef); ncclCommDestroy(ceff); ncclCommDestroy(czero);
  MPI_Finalize();
  return 0;
}
