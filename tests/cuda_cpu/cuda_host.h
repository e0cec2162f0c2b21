// The CUDA built-ins parscan's kernels use, for the host C++ compiler (test-only, see __init__.py).
// Included before scan.cu; the runtime (runtime.cpp) runs every CUDA thread as a fiber.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

struct parscan_dim3 { unsigned x, y, z; };
extern "C" {
extern parscan_dim3 parscan_threadIdx, parscan_blockIdx, parscan_blockDim, parscan_gridDim;
void parscan_syncthreads();
void parscan_yield_point();
void parscan_note_poll(int value);
void* parscan_shared_slot(int id, size_t size, size_t align);
}
#define threadIdx parscan_threadIdx
#define blockIdx parscan_blockIdx
#define blockDim parscan_blockDim
#define gridDim parscan_gridDim

// `__shared__ T name[N];` is rewritten by the harness to `auto& name = parscan_shared<T[N]>(id);`:
// one object per block (not per thread), uninitialised (filled with 0xff bytes) when the block starts.
template <class T> inline T& parscan_shared(int id) {
    return *static_cast<T*>(parscan_shared_slot(id, sizeof(T), alignof(T)));
}

inline void __syncthreads() { parscan_syncthreads(); }
inline void __threadfence() {
    parscan_yield_point();
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    parscan_yield_point();
}

// Atomics are sequentially consistent here (stronger than the GPU's): what they can show is a wrong
// value, index or protocol, not a missing fence.  An add of 0 to an int is the look-back's poll of a
// status flag; its value is counted (parscan_polls) so a test can prove the walk over aggregates ran.
template <class T> inline T parscan_atomic_add(T* p, T v) {
    parscan_yield_point();
    T old = __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
    parscan_yield_point();
    return old;
}
template <class T> inline T parscan_atomic_exch(T* p, T v) {
    parscan_yield_point();
    T old = __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
    parscan_yield_point();
    return old;
}
// the overloads CUDA declares (integers; parscan uses no floating-point atomics)
inline int atomicAdd(int* p, int v) {
    const int old = parscan_atomic_add(p, v);
    if (v == 0) parscan_note_poll(old);
    return old;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return parscan_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return parscan_atomic_add(p, v); }
inline int atomicExch(int* p, int v) { return parscan_atomic_exch(p, v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return parscan_atomic_exch(p, v); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) { return parscan_atomic_exch(p, v); }
// L2-cached (L1-bypassing) load and store: volatile accesses, each a scheduling point
template <class T> inline T __ldcg(const T* p) {
    parscan_yield_point();
    return *static_cast<const volatile T*>(p);
}
template <class T> inline void __stcg(T* p, T v) {
    parscan_yield_point();
    *static_cast<volatile T*>(p) = v;
}

// the two half-precision conversions scan.cu does with PTX cvt (round to nearest even)
inline float parscan_half_to_float(unsigned short bits) {
    _Float16 h;
    std::memcpy(&h, &bits, 2);
    return float(h);
}
inline unsigned short parscan_float_to_half(float v) {
    _Float16 h = _Float16(v);
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

// ---- kernel entry points: unpack a cuLaunchKernel-style argument array (one pointer per parameter) --
template <class... P, size_t... I>
__attribute__((no_sanitize_address)) inline void parscan_call(void (*f)(P...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<P>*>(args[I])...);
}
template <class... P> __attribute__((no_sanitize_address)) inline void parscan_invoke(void (*f)(P...), void** args) {
    parscan_call(f, args, std::index_sequence_for<P...>{});
}

// A parameter's type as a code: 'p' pointer or 's' scalar, then the (pointee's) size in bytes and
// kind: f floating, i signed, u unsigned integer, x a struct (half_t, cplx<R>).  E.g. "p4f", "s8i".
template <class T> inline std::string parscan_code() {
    using U = std::remove_cv_t<std::remove_pointer_t<T>>;
    std::string s = std::is_pointer_v<T> ? "p" : "s";
    s += std::to_string(sizeof(U));
    s += std::is_floating_point_v<U> ? "f" : std::is_integral_v<U> ? (std::is_signed_v<U> ? "i" : "u") : "x";
    return s;
}
template <class... P> inline std::string parscan_signature(void (*)(P...)) {
    std::string s;
    ((s += parscan_code<P>() + ","), ...);
    return s;
}
