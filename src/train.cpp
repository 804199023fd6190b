#include "src/train.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>

#include <cublasLt.h>
#include <mpi.h>

#include "comm/comm_internal.h"  // MPT_MPI_CHECK
#include "kernels/device_info.h"
#include "src/checkpoint.h"
#include "src/cuda_check.h"

namespace mpt {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

constexpr size_t kGemmWorkspace = 32u << 20;

double allreduce_sum(double v, MPI_Comm c) {
  double out = 0;
  MPT_MPI_CHECK(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, MPI_SUM, c));
  return out;
}

// Runs `body` on every rank; if it throws InputError on any rank, every rank throws: the rank that failed
// rethrows its own error, the others a PeerInputError. No rank goes on into a collective alone.
struct PeerInputError : std::runtime_error {
  PeerInputError() : std::runtime_error("another rank reported bad input") {}
};
template <class F>
void agree(MPI_Comm comm, F&& body) {
  std::exception_ptr err;
  try {
    body();
  } catch (const InputError&) {
    err = std::current_exception();
  }
  if (!all_ranks_ok(err == nullptr, comm)) {
    if (err) std::rethrow_exception(err);
    throw PeerInputError();
  }
}

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1 << 30));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1 << 20));
  return buf;
}

}  // namespace

Trainer::Trainer(const Config& cfg, const WorldInfo& world, MPI_Comm mpi_comm)
    : cfg_(cfg), world_(world), mpi_comm_(mpi_comm) {
  MPT_MPI_CHECK(MPI_Comm_rank(mpi_comm_, &world_.rank));
  MPT_MPI_CHECK(MPI_Comm_size(mpi_comm_, &world_.size));
  rank0_ = world_.rank == 0;
  agree(mpi_comm_, [&] {
    setup_device();
    prec_ = resolve_precision(cfg_.precision, hw_);
    if (cfg_.model.type != "mlp")
      throw InputError(cfg_.source, "model.type", "'" + cfg_.model.type + "' is not available in this build (mlp)");
    train_ = load_fashion_mnist(cfg_.data.dir, true, cfg_.data.train_limit);
    test_ = load_fashion_mnist(cfg_.data.dir, false, cfg_.data.test_limit);
    if (train_.dim() != cfg_.model.input_dim)
      throw InputError(cfg_.source, "model.input_dim",
                       std::to_string(cfg_.model.input_dim) + " does not match the data (" + std::to_string(train_.dim()) + ")");
    if (cfg_.model.num_classes < train_.num_classes)
      throw InputError(cfg_.source, "model.num_classes", "smaller than the dataset's " + std::to_string(train_.num_classes));
    const int64_t per_step = int64_t(cfg_.train.batch_size) * cfg_.train.grad_accum;
    sampler_ = std::make_unique<DistributedSampler>(train_.count, world_.rank, world_.size, cfg_.train.seed);
    steps_per_epoch_ = sampler_->per_rank() / per_step;
    if (steps_per_epoch_ < 1)
      throw InputError(cfg_.source, "train.batch_size",
                       "batch_size * grad_accum * ranks exceeds the " + std::to_string(train_.count) + " training examples");
  });

  comm_ = ex_.cuda() ? make_nccl_communicator(world_, comm_stream_, mpi_comm_) : make_mpi_communicator(mpi_comm_);
  model_ = std::make_unique<Mlp>(cfg_.model, cfg_.precision, prec_.model, ex_,
                                 std::max(cfg_.train.batch_size, 1024));
  opt_ = std::make_unique<ShardedOptimizer>(ex_, *comm_, model_->param_specs(), cfg_.zero.stage,
                                            size_t(cfg_.zero.bucket_mb * 1024 * 1024), cfg_.train.seed, comm_stream_);
  model_->bind(*opt_);
  scaler_ = std::make_unique<LossScaler>(cfg_.loss_scale, loss_scaling_enabled(cfg_.loss_scale, prec_.model));
  total_steps_ = cfg_.train.steps > 0 ? cfg_.train.steps : int64_t(cfg_.train.epochs) * steps_per_epoch_;
  sampler_->set_epoch(0);
  xbuf_.resize(size_t(model_->max_batch()) * size_t(train_.dim()));
  ybuf_.resize(size_t(model_->max_batch()));
  if (!cfg_.checkpoint.dir.empty() && cfg_.checkpoint.resume) try_resume();
}

Trainer::~Trainer() {
  if (metrics_) std::fclose(metrics_);
  opt_.reset();
  model_.reset();
  comm_.reset();
  if (ex_.cuda()) {
    if (ex_.blas) cublasLtDestroy(static_cast<cublasLtHandle_t>(ex_.blas));
    if (ex_.workspace) cudaFree(ex_.workspace);
    cudaStreamDestroy(reinterpret_cast<cudaStream_t>(ex_.stream));
    cudaStreamDestroy(reinterpret_cast<cudaStream_t>(comm_stream_));
  }
}

void Trainer::setup_device() {
  const int ngpu = cuda_device_count();
  if (cfg_.device == "cuda" && ngpu == 0)
    throw InputError(cfg_.source, "device", "'cuda' requested but no CUDA device is visible on " + world_.host);
  const bool use_cuda = cfg_.device == "cuda" || (cfg_.device == "auto" && ngpu > 0);
  if (!use_cuda) {
    ex_.device = Device::CPU;
    device_desc_ = "cpu";
    return;
  }
  if (ngpu < world_.local_size)
    throw InputError(cfg_.source, "device", world_.host + " has " + std::to_string(ngpu) + " GPU(s) for " +
                                                std::to_string(world_.local_size) + " local ranks");
  select_cuda_device(world_);
  const DeviceInfo info = query_device(world_.local_rank);
  hw_.cuda = true;
  hw_.cc_major = info.cc_major;
  hw_.cc_minor = info.cc_minor;
  char buf[256];
  std::snprintf(buf, sizeof buf, "cuda:%d %s (sm%d%d, %s, bf16 %s, tensor cores %s)", info.index, info.name.c_str(),
                info.cc_major, info.cc_minor, human_bytes(double(info.total_mem)).c_str(), info.bf16 ? "yes" : "no",
                info.tensor_cores ? "yes" : "no");
  device_desc_ = buf;
  ex_.device = Device::CUDA;
  cudaStream_t s, c;
  MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&c, cudaStreamNonBlocking));
  ex_.stream = reinterpret_cast<Stream>(s);
  comm_stream_ = reinterpret_cast<Stream>(c);
  cublasLtHandle_t h;
  if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) MPT_FATAL("cublasLtCreate", "cannot create a cuBLASLt handle");
  ex_.blas = h;
  MPT_CUDA_CHECK(cudaMalloc(&ex_.workspace, kGemmWorkspace));
  ex_.workspace_bytes = kGemmWorkspace;
}

void Trainer::print_banner() const {
  if (!rank0_ || cfg_.log.quiet) return;
  std::printf("mptrain: %d rank(s), device %s, communicator %s\n", world_.size, device_desc_.c_str(), comm_->name());
  std::printf("precision: %s; loss scaling %s (init %g)\n", prec_.mode.c_str(),
              scaler_->enabled() ? "dynamic" : "off", scaler_->scale());
  std::printf("policy:");
  for (const auto& [name, dt] : model_->layer_dtypes()) std::printf(" %s=%s", name.c_str(), dtype_name(dt));
  std::printf(" softmax/loss=fp32 optimizer=fp32\n");
  const MemoryReport m = opt_->memory();
  std::printf("model: MLP %d", cfg_.model.input_dim);
  for (int h : cfg_.model.hidden) std::printf("-%d", h);
  std::printf("-%d, %lld parameters, %d bucket(s); ZeRO-%d state per rank: params %s, grads %s, grad shard %s, "
              "master %s, adam %s\n",
              cfg_.model.num_classes, static_cast<long long>(opt_->num_elements()), opt_->num_buckets(),
              cfg_.zero.stage, human_bytes(double(m.params)).c_str(), human_bytes(double(m.grads)).c_str(),
              human_bytes(double(m.grad_shard)).c_str(), human_bytes(double(m.master)).c_str(),
              human_bytes(double(m.adam)).c_str());
  std::printf("data: %lld train / %lld test examples; %lld steps per epoch of %d x %d x %d samples\n",
              static_cast<long long>(train_.count), static_cast<long long>(test_.count),
              static_cast<long long>(steps_per_epoch_), cfg_.train.batch_size, cfg_.train.grad_accum, world_.size);
  std::fflush(stdout);
}

StepRecord Trainer::train_step() {
  if (step_in_epoch_ >= steps_per_epoch_) {
    ++epoch_;
    step_in_epoch_ = 0;
    sampler_->set_epoch(epoch_);
  }
  const auto t0 = Clock::now();
  StepRecord rec;
  rec.step = step_;
  rec.epoch = epoch_;
  rec.scale = scaler_->scale();
  const int B = cfg_.train.batch_size, A = cfg_.train.grad_accum;
  // Loss is the mean over the global batch: each micro-batch's gradient carries 1 / (B * A) here and the
  // 1 / world in the unscale pass (DESIGN.md step 3).
  const float grad_scale = rec.scale / float(B * A);
  opt_->zero_grads();
  double loss_sum = 0;
  for (int a = 0; a < A; ++a) {
    const bool last = a == A - 1;
    opt_->set_last_micro(last);
    if (last && step_ == cfg_.debug.inject_inf_step && world_.rank == cfg_.debug.inject_inf_rank)
      opt_->inject_inf_next_reduction();
    const int64_t first = (step_in_epoch_ * A + a) * B;
    std::vector<int64_t> idx(static_cast<size_t>(B));
    for (int j = 0; j < B; ++j) idx[size_t(j)] = sampler_->index(first + j);
    make_image_batch(train_, idx.data(), B, xbuf_.data(), ybuf_.data());
    loss_sum += model_->forward_backward(xbuf_.data(), ybuf_.data(), B, grad_scale, *opt_);
  }
  opt_->finish_reduction();
  rec.lr = learning_rate(cfg_.optimizer, step_, total_steps_);
  AdamWHyper h;
  h.lr = float(rec.lr);
  h.beta1 = float(cfg_.optimizer.beta1);
  h.beta2 = float(cfg_.optimizer.beta2);
  h.eps = float(cfg_.optimizer.eps);
  h.weight_decay = float(cfg_.optimizer.weight_decay);
  const StepStats st = opt_->step(rec.scale, h, cfg_.optimizer.clip_norm);
  scaler_->update(st.overflow);
  rec.skipped = st.overflow;
  rec.grad_norm = st.grad_norm;
  rec.next_scale = scaler_->scale();
  rec.loss = allreduce_sum(loss_sum, mpi_comm_) / double(int64_t(B) * A * world_.size);
  if (cfg_.debug.check_consistency) {
    uint64_t mine[2] = {opt_->param_hash(), 0};
    float s = scaler_->scale();
    std::memcpy(&mine[1], &s, sizeof s);
    std::vector<uint64_t> all(size_t(2 * world_.size));
    MPT_MPI_CHECK(MPI_Allgather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, mpi_comm_));
    for (int r = 0; r < world_.size; ++r)
      if (all[size_t(2 * r)] != mine[0] || all[size_t(2 * r + 1)] != mine[1])
        MPT_FATAL("debug.check_consistency", "rank " + std::to_string(r) + " differs in parameters or loss scale at step " +
                                                 std::to_string(step_));
  }
  if (ex_.cuda()) MPT_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(ex_.stream)));
  rec.seconds = since(t0);
  ++step_;
  ++step_in_epoch_;
  return rec;
}

EvalResult Trainer::evaluate() {
  double loss = 0;
  int64_t correct = 0, count = 0;
  const int B = model_->max_batch();
  std::vector<int64_t> idx;
  for (int64_t i = world_.rank; i < test_.count; i += world_.size) idx.push_back(i);
  for (size_t s = 0; s < idx.size(); s += size_t(B)) {
    const int n = int(std::min<size_t>(size_t(B), idx.size() - s));
    make_image_batch(test_, idx.data() + s, n, xbuf_.data(), ybuf_.data());
    model_->evaluate(xbuf_.data(), ybuf_.data(), n, &loss, &correct);
    count += n;
  }
  double v[3] = {loss, double(correct), double(count)}, g[3];
  MPT_MPI_CHECK(MPI_Allreduce(v, g, 3, MPI_DOUBLE, MPI_SUM, mpi_comm_));
  EvalResult r;
  r.count = int64_t(g[2]);
  r.loss = g[0] / std::max(1.0, g[2]);
  r.accuracy = g[1] / std::max(1.0, g[2]);
  return r;
}

void Trainer::save_checkpoint() {
  const auto state = opt_->gather_state();  // collective
  if (!rank0_) return;
  CheckpointMeta meta;
  meta.step = step_;
  meta.epoch = epoch_;
  meta.step_in_epoch = step_in_epoch_;
  meta.adam_step = opt_->adam_step();
  meta.scale = scaler_->raw_scale();
  meta.growth_tracker = scaler_->growth_tracker();
  meta.hysteresis_left = scaler_->hysteresis_left();
  meta.skipped = scaler_->skipped();
  for (int i = 0; i < opt_->num_params(); ++i) meta.params.emplace_back(opt_->spec(i).name, opt_->spec(i).shape);
  meta.config = cfg_.resolved;
  const std::string path = mpt::save_checkpoint(cfg_.checkpoint.dir, meta, state);
  if (!cfg_.log.quiet) std::printf("checkpoint: %s\n", path.c_str());
}

void Trainer::try_resume() {
  CheckpointMeta meta;
  ShardedOptimizer::FullState state;
  bool found = false;
  std::vector<ParamSpec> specs;
  for (int i = 0; i < opt_->num_params(); ++i) specs.push_back(opt_->spec(i));
  agree(mpi_comm_, [&] {
    const std::string path = latest_checkpoint(cfg_.checkpoint.dir);
    if (path.empty()) return;
    load_checkpoint(path, specs, &meta, &state);
    found = true;
  });
  const bool everywhere = all_ranks_ok(found, mpi_comm_), nowhere = all_ranks_ok(!found, mpi_comm_);
  if (!everywhere && !nowhere)
    throw InputError(cfg_.checkpoint.dir, "checkpoint.dir", "a checkpoint is visible to some ranks only");
  if (!found) return;
  opt_->load_state(state);
  opt_->set_adam_step(meta.adam_step);
  scaler_->set_state(meta.scale, meta.growth_tracker, meta.hysteresis_left, meta.skipped);
  step_ = meta.step;
  epoch_ = meta.epoch;
  step_in_epoch_ = meta.step_in_epoch;
  sampler_->set_epoch(epoch_);
  if (rank0_ && !cfg_.log.quiet)
    std::printf("resumed from %s at step %lld (epoch %d)\n", cfg_.checkpoint.dir.c_str(),
                static_cast<long long>(step_), epoch_ + 1);
}

TrainSummary Trainer::run() {
  print_banner();
  if (rank0_ && !cfg_.log.metrics.empty()) {
    std::error_code ec;
    const auto parent = std::filesystem::path(cfg_.log.metrics).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    metrics_ = std::fopen(cfg_.log.metrics.c_str(), step_ > 0 ? "a" : "w");
    if (!metrics_) std::fprintf(stderr, "mptrain: %s: log.metrics: cannot open for writing\n", cfg_.log.metrics.c_str());
  }
  TrainSummary sum;
  const auto t_run = Clock::now();
  auto t_epoch = Clock::now();
  auto t_window = Clock::now();
  int64_t window_samples = 0;
  const int64_t global_batch = int64_t(cfg_.train.batch_size) * cfg_.train.grad_accum * world_.size;
  while (step_ < total_steps_) {
    const StepRecord r = train_step();
    window_samples += global_batch;
    if (metrics_) {
      nlohmann::json j = {{"step", r.step}, {"epoch", r.epoch + 1}, {"loss", r.loss}, {"scale", r.scale},
                          {"skipped", r.skipped}, {"skipped_total", scaler_->skipped()}, {"grad_norm", r.grad_norm},
                          {"lr", r.lr}, {"step_s", r.seconds}, {"samples_per_s", double(global_batch) / r.seconds}};
      std::fprintf(metrics_, "%s\n", j.dump().c_str());
    }
    if (rank0_ && !cfg_.log.quiet && (step_ % cfg_.log.every == 0 || step_ == total_steps_)) {
      std::printf("step %6lld | epoch %d | loss %.4f | scale %g | skipped %lld | gnorm %.3f | lr %.2e | %.0f samples/s\n",
                  static_cast<long long>(step_), r.epoch + 1, r.loss, r.next_scale,
                  static_cast<long long>(scaler_->skipped()), r.grad_norm, r.lr, double(window_samples) / since(t_window));
      std::fflush(stdout);
      t_window = Clock::now();
      window_samples = 0;
    }
    const bool epoch_end = step_in_epoch_ == steps_per_epoch_;
    if (epoch_end || step_ == total_steps_) {
      const double secs = since(t_epoch);
      EvalResult ev;
      if (cfg_.train.eval_each_epoch || step_ == total_steps_) ev = evaluate();
      sum.epoch_seconds.push_back(secs);
      sum.epoch_accuracy.push_back(ev.accuracy);
      if (rank0_ && !cfg_.log.quiet)
        std::printf("epoch %d done in %.1f s | test loss %.4f | test accuracy %.2f%%\n", r.epoch + 1, secs, ev.loss,
                    100 * ev.accuracy);
      if (metrics_) {
        nlohmann::json j = {{"event", "eval"}, {"epoch", r.epoch + 1}, {"step", step_}, {"test_loss", ev.loss},
                            {"test_accuracy", ev.accuracy}, {"epoch_s", secs}};
        std::fprintf(metrics_, "%s\n", j.dump().c_str());
        std::fflush(metrics_);
      }
      sum.test = ev;
      if (!cfg_.checkpoint.dir.empty()) save_checkpoint();
      t_epoch = Clock::now();
    } else if (!cfg_.checkpoint.dir.empty() && cfg_.checkpoint.every_steps > 0 &&
               step_ % cfg_.checkpoint.every_steps == 0) {
      save_checkpoint();
    }
  }
  sum.steps = step_;
  sum.skipped = scaler_->skipped();
  sum.seconds = since(t_run);
  sum.final_scale = scaler_->scale();
  sum.peak_device_bytes = peak_allocated_bytes(ex_.device) + ex_.workspace_bytes;
  if (ex_.cuda()) sum.device_used_bytes = peak_device_memory();
  if (rank0_ && !cfg_.log.quiet) {
    std::printf("summary: %lld steps (%lld skipped) in %.1f s | test accuracy %.2f%% | final scale %g | "
                "peak %s memory per rank: %s allocated by mptrain",
                static_cast<long long>(sum.steps), static_cast<long long>(sum.skipped), sum.seconds,
                100 * sum.test.accuracy, sum.final_scale, ex_.cuda() ? "GPU" : "host",
                human_bytes(double(sum.peak_device_bytes)).c_str());
    if (ex_.cuda()) std::printf(", %s in use on the device", human_bytes(double(sum.device_used_bytes)).c_str());
    std::printf("\n");
  }
  if (metrics_) {
    nlohmann::json j = {{"event", "summary"}, {"steps", sum.steps}, {"skipped", sum.skipped},
                        {"seconds", sum.seconds}, {"test_accuracy", sum.test.accuracy}, {"test_loss", sum.test.loss},
                        {"final_scale", sum.final_scale}, {"precision", prec_.mode}, {"ranks", world_.size},
                        {"zero_stage", cfg_.zero.stage}, {"device", device_desc_},
                        {"peak_allocated_bytes", sum.peak_device_bytes},
                        {"device_used_bytes", sum.device_used_bytes},
                        {"epoch_seconds", sum.epoch_seconds}};
    std::fprintf(metrics_, "%s\n", j.dump().c_str());
    std::fclose(metrics_);
    metrics_ = nullptr;
  }
  return sum;
}

int train_command(int argc, char** argv) {
  // argv[0] is "train"
  std::string path;
  std::vector<std::string> sets;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--set") {
      if (i + 1 >= argc) { std::fprintf(stderr, "mptrain train: --set needs key.path=value\n"); return kExitBadInput; }
      sets.push_back(argv[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      sets.push_back(a.substr(6));
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "mptrain train: unknown option %s (see mptrain train --help)\n", a.c_str());
      return kExitBadInput;
    } else if (path.empty()) {
      path = a;
    } else {
      std::fprintf(stderr, "mptrain train: one CONFIG only (got %s and %s)\n", path.c_str(), a.c_str());
      return kExitBadInput;
    }
  }
  if (path.empty()) { std::fprintf(stderr, "mptrain train: missing CONFIG (see mptrain train --help)\n"); return kExitBadInput; }
  WorldInfo world = mpi_init(nullptr, nullptr);
  int code = 0;
  try {
    Config cfg;
    agree(MPI_COMM_WORLD, [&] { cfg = load_config(path, sets); });
    Trainer t(cfg, world);
    t.run();
  } catch (const InputError& e) {
    std::fprintf(stderr, "mptrain: %s\n", e.what());
    code = kExitBadInput;
  } catch (const PeerInputError&) {
    code = kExitBadInput;
  }
  mpi_finalize();
  return code;
}

}  // namespace mpt
