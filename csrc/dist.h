// C interface of the data-parallel shim over PyTorch's own distributed engine (c10d):
// a TCPStore for rendezvous and small keys, a Gloo (or, where built, NCCL) process group
// for all-reduce, broadcast and barrier. `src/dist.rs` is the only caller.
//
// Every function that can fail returns 0 on success and 1 on failure; on failure `*err`
// holds a malloc'd message (the C++ exception's text, no backtrace) that the caller frees
// with `vnca_dist_free`. No C++ exception crosses this boundary and nothing here aborts.
// Timeouts are in milliseconds.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct VncaStore VncaStore;
typedef struct VncaGroup VncaGroup;

// 1 when the NCCL process group was compiled in (headers found at build time), else 0.
int vnca_dist_nccl_built(void);

// Raises libtorch's C++ log level to ERROR unless TORCH_CPP_LOG_LEVEL is set: when a
// peer dies, c10d logs every failed store call as a warning with a C++ backtrace, which
// would bury the one error line the caller prints.
void vnca_dist_quiet_logs(void);

// Frees a message or a value returned by this interface.
void vnca_dist_free(void* p);

// Connects to (or, with is_server, hosts) the TCPStore at host:port. With world_size > 0
// each connection counts itself in and the server waits until world_size have (itself
// included), up to timeout.
int vnca_dist_store_new(const char* host, uint16_t port, int is_server, int world_size,
                        int64_t timeout_ms, VncaStore** out, char** err);
// A second client connection to the same store, for use from another thread.
int vnca_dist_store_clone(VncaStore* s, VncaStore** out, char** err);
void vnca_dist_store_free(VncaStore* s);
int vnca_dist_store_set(VncaStore* s, const char* key, const uint8_t* value, size_t len,
                        char** err);
// Waits up to timeout for the key, then returns its value (malloc'd, `vnca_dist_free`).
int vnca_dist_store_get(VncaStore* s, const char* key, int64_t timeout_ms, uint8_t** value,
                        size_t* len, char** err);
// The value when the key exists now (*found = 1), without waiting (*found = 0 otherwise).
int vnca_dist_store_try_get(VncaStore* s, const char* key, int* found, uint8_t** value,
                            size_t* len, char** err);

// A process group over the store (its keys under `prefix`). backend: "gloo" or "nccl".
// gloo_host: the address Gloo binds to, or NULL for PyTorch's default (GLOO_SOCKET_IFNAME,
// else this machine's hostname, else loopback). cuda_device: this rank's GPU for NCCL's
// barrier (ignored by Gloo).
int vnca_dist_group_new(VncaStore* s, const char* prefix, const char* backend, int rank,
                        int world_size, const char* gloo_host, int cuda_device,
                        int64_t timeout_ms, VncaGroup** out, char** err);
// Destroys the group (joins its worker threads).
void vnca_dist_group_free(VncaGroup* g);
// Drops the handle without destroying the group: after a failed collective a worker
// thread may still be blocked, and joining it could hang the exit.
void vnca_dist_group_leak(VncaGroup* g);

// In-place sum over all ranks of one tensor (an `at::Tensor*`, e.g. tch's `as_ptr()`).
int vnca_dist_all_reduce_sum(VncaGroup* g, const void* tensor, int64_t timeout_ms,
                             char** err);
// In place: every rank's tensor becomes root's.
int vnca_dist_broadcast(VncaGroup* g, const void* tensor, int root, int64_t timeout_ms,
                        char** err);
int vnca_dist_barrier(VncaGroup* g, int64_t timeout_ms, char** err);

#ifdef __cplusplus
}
#endif
