// The data-parallel shim: a thin C layer over c10d (TCPStore, ProcessGroupGloo and, when
// VNCA_DIST_NCCL is defined by build.rs, ProcessGroupNCCL), the classes that
// `torch.distributed` itself uses, compiled into libtorch. There is no socket code and no
// reduction here: each function forwards one call and turns exceptions into messages.
// See dist.h for the contract and src/dist.rs for the safe API.
#include "dist.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef VNCA_DIST_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct VncaStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct VncaGroup {
  c10::intrusive_ptr<c10d::Backend> backend;
  bool nccl;
  int cuda_device;
};

namespace {

char* copy_message(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs f; any exception becomes *err and the return value 1. c10::Error's what() carries
// a C++ backtrace that would bury the one line the user needs, so its short form is used.
template <typename F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
  } catch (...) {
    *err = copy_message("unknown C++ exception");
  }
  return 1;
}

std::chrono::milliseconds ms(int64_t t) { return std::chrono::milliseconds(t); }

void copy_out(const std::vector<uint8_t>& v, uint8_t** value, size_t* len) {
  // malloc(0) may return NULL; one spare byte keeps the pointer valid for empty values.
  auto* buf = static_cast<uint8_t*>(std::malloc(v.size() + 1));
  TORCH_CHECK(buf != nullptr, "out of memory copying a store value");
  if (!v.empty()) {
    std::memcpy(buf, v.data(), v.size());
  }
  *value = buf;
  *len = v.size();
}

// Waits for one piece of work. Work::wait throws the collective's own error (a closed
// connection, Gloo's timeout); a wait that runs out first is reported the same way.
void finish(const c10::intrusive_ptr<c10d::Work>& work, int64_t timeout_ms, const char* what) {
  if (!work->wait(ms(timeout_ms))) {
    TORCH_CHECK(false, what, " did not finish within ", timeout_ms, " ms");
  }
}

}  // namespace

extern "C" {

int vnca_dist_nccl_built(void) {
#ifdef VNCA_DIST_NCCL
  return 1;
#else
  return 0;
#endif
}

void vnca_dist_free(void* p) { std::free(p); }

void vnca_dist_quiet_logs(void) {
  // 2 = ERROR: c10d's network warnings (each with a C++ backtrace) stay quiet.
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr && FLAGS_caffe2_log_level < 2) {
    FLAGS_caffe2_log_level = 2;
  }
}

int vnca_dist_store_new(const char* host, uint16_t port, int is_server, int world_size,
                        int64_t timeout_ms, VncaStore** out, char** err) {
  return guarded(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    // As torch.distributed: every client (the server's own included) counts itself in,
    // and the server waits until world_size have.
    if (world_size > 0) {
      opts.numWorkers = static_cast<size_t>(world_size);
    }
    opts.waitWorkers = world_size > 0;
    opts.timeout = ms(timeout_ms);
    // As torch.distributed's env:// rendezvous: several stores may share host:port.
    opts.multiTenant = true;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new VncaStore{std::move(store)};
  });
}

int vnca_dist_store_clone(VncaStore* s, VncaStore** out, char** err) {
  return guarded(err, [&] { *out = new VncaStore{s->store->clone()}; });
}

void vnca_dist_store_free(VncaStore* s) {
  try {
    delete s;
  } catch (...) {
    // A destructor that throws (a server thread that will not stop) must not abort us.
  }
}

int vnca_dist_store_set(VncaStore* s, const char* key, const uint8_t* value, size_t len,
                        char** err) {
  return guarded(err, [&] {
    s->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
  });
}

int vnca_dist_store_get(VncaStore* s, const char* key, int64_t timeout_ms, uint8_t** value,
                        size_t* len, char** err) {
  return guarded(err, [&] {
    std::string k(key);
    s->store->wait({k}, ms(timeout_ms));
    copy_out(s->store->get(k), value, len);
  });
}

int vnca_dist_store_try_get(VncaStore* s, const char* key, int* found, uint8_t** value,
                            size_t* len, char** err) {
  return guarded(err, [&] {
    std::string k(key);
    *found = 0;
    if (s->store->check({k})) {
      copy_out(s->store->get(k), value, len);
      *found = 1;
    }
  });
}

int vnca_dist_group_new(VncaStore* s, const char* prefix, const char* backend, int rank,
                        int world_size, const char* gloo_host, int cuda_device,
                        int64_t timeout_ms, VncaGroup** out, char** err) {
  return guarded(err, [&] {
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    std::string name(backend);
    if (name == "gloo") {
      c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> opts;
      if (gloo_host != nullptr) {
        opts = c10d::ProcessGroupGloo::Options::create(ms(timeout_ms));
        opts->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname(std::string(gloo_host)));
      } else {
        opts = c10d::ProcessGroupGloo::Options::create_default(ms(timeout_ms));
      }
      auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, opts);
      *out = new VncaGroup{std::move(pg), false, cuda_device};
    } else if (name == "nccl") {
#ifdef VNCA_DIST_NCCL
      // Blocking wait makes Work::wait throw on a timeout; without it NCCL's watchdog
      // thread ends the whole process instead. A user's own setting wins.
      setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = ms(timeout_ms);
      auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, opts);
      *out = new VncaGroup{std::move(pg), true, cuda_device};
#else
      TORCH_CHECK(false,
                  "this vnca was built without NCCL (build.rs found no NCCL/CUDA headers "
                  "next to libtorch); use the gloo backend");
#endif
    } else {
      TORCH_CHECK(false, "unknown backend `", name, "` (use gloo or nccl)");
    }
  });
}

void vnca_dist_group_free(VncaGroup* g) {
  try {
    delete g;
  } catch (...) {
  }
}

void vnca_dist_group_leak(VncaGroup* g) {
  // intrusive_ptr::release() hands out the pointer without dropping the reference.
  (void)g->backend.release();
  delete g;
}

int vnca_dist_all_reduce_sum(VncaGroup* g, const void* tensor, int64_t timeout_ms,
                             char** err) {
  return guarded(err, [&] {
    // A copy of the handle shares the caller's storage, so the sum lands in place.
    std::vector<at::Tensor> ts{*static_cast<const at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = ms(timeout_ms);
    finish(g->backend->allreduce(ts, opts), timeout_ms, "all-reduce");
  });
}

int vnca_dist_broadcast(VncaGroup* g, const void* tensor, int root, int64_t timeout_ms,
                        char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> ts{*static_cast<const at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = ms(timeout_ms);
    finish(g->backend->broadcast(ts, opts), timeout_ms, "broadcast");
  });
}

int vnca_dist_barrier(VncaGroup* g, int64_t timeout_ms, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = ms(timeout_ms);
    if (g->nccl) {
      opts.device_ids = {g->cuda_device};
    }
    finish(g->backend->barrier(opts), timeout_ms, "barrier");
  });
}

}  // extern "C"
