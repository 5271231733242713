/*
 * cuda_host_emu.h -- run the TokenCompact CUDA source on a CPU, for tests on machines without a GPU.
 *
 * Force-included (g++ -include cuda_host_emu.h -DADAPLER_HOST_EMULATION -x c++ tokenCompactKernel.cu)
 * so that the kernel file compiles as host C++ with no change but its launch macro. It emulates just
 * what those kernels use, with CUDA's semantics:
 *   - a grid runs block after block; the threads of a block are coroutines (ucontext) on one OS
 *     thread, switched only at barriers, so the run is deterministic;
 *   - __syncthreads() waits for every live thread of the block; __ballot_sync / __shfl_xor_sync with
 *     a full mask wait for the 32 lanes of the warp and exchange values; a barrier that can never be
 *     released (divergent __syncthreads, a warp op missing lanes) aborts with a message;
 *   - __shared__ variables are shared by the threads of a block (blocks never overlap in time);
 *   - "device" memory is host memory; cudaMemsetAsync/cudaMemcpyAsync are immediate; launches check
 *     their configuration like the driver does (cudaErrorInvalidConfiguration via cudaGetLastError).
 * What it cannot show: timing, memory-model races between concurrent blocks, bank conflicts, and
 * anything about the real compiler's code generation. The GPU proof (tools/gpu_proof.py) covers those.
 */
#ifndef ADAPLER_CUDA_HOST_EMU_H
#define ADAPLER_CUDA_HOST_EMU_H

#include <cuda_runtime.h> // types (dim3, uint4, cudaError_t ...) and API declarations; host-only here

#include <cmath>
#include <cstdint>
#include <functional>

// CUDA's host headers turn the execution-space keywords into attributes g++ ignores (and warns
// about); __shared__ must become a per-block variable instead.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define __forceinline__ inline

namespace adapler_emu
{
extern dim3 gThreadIdx;
extern dim3 gBlockIdx;
extern dim3 gBlockDim;
extern dim3 gGridDim;

void syncthreads();
unsigned ballot(unsigned mask, bool pred);
int shflXor(unsigned mask, int value, int laneMask);
int atomicMaxInt(int* address, int value);
void runGrid(dim3 grid, dim3 block, std::function<void()> const& body);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t /*stream*/, Args&&... args)
{
    runGrid(grid, block, [&]() { kernel(args...); });
}
} // namespace adapler_emu

#define threadIdx (::adapler_emu::gThreadIdx)
#define blockIdx (::adapler_emu::gBlockIdx)
#define blockDim (::adapler_emu::gBlockDim)
#define gridDim (::adapler_emu::gGridDim)

inline void __syncthreads()
{
    ::adapler_emu::syncthreads();
}
inline unsigned __ballot_sync(unsigned mask, int pred)
{
    return ::adapler_emu::ballot(mask, pred != 0);
}
inline int __shfl_xor_sync(unsigned mask, int value, int laneMask)
{
    return ::adapler_emu::shflXor(mask, value, laneMask);
}
inline int __popc(unsigned x)
{
    return __builtin_popcount(x);
}
// The host's IEEE fp32 division and conversion round to nearest, as these intrinsics do.
inline float __fdiv_rn(float a, float b)
{
    volatile float q = a / b; // volatile: no excess precision, no reassociation
    return q;
}
inline float __int2float_rn(int x)
{
    return static_cast<float>(x);
}
inline int atomicMax(int* address, int value)
{
    return ::adapler_emu::atomicMaxInt(address, value);
}

#endif // ADAPLER_CUDA_HOST_EMU_H
