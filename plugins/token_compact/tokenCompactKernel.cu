/*
 * tokenCompactKernel.cu -- CUDA implementation of the AdapLeR `TokenCompact` link.
 * The rule, the memory contract and the two-pass design are documented in tokenCompact.h.
 *
 * Build: nvcc >= 11 (compiled here with 13.0), sm_80 / sm_90 by default. No fast-math: the threshold
 * delta = eta / n must be the IEEE round-to-nearest fp32 quotient that NumPy computes, so the keep
 * decisions match the reference bit for bit (we also use __fdiv_rn explicitly, which is immune to
 * -use_fast_math / -prec-div=false).
 */
#include "tokenCompact.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <limits>

// Kernel launches go through this macro so that the very same source can also be compiled as host
// C++ by tools/host_emu (a CPU emulation of blocks, warps and barriers used by the CPU-only tests);
// with nvcc it is the ordinary triple-chevron launch.
#if defined(ADAPLER_HOST_EMULATION)
#define ADAPLER_LAUNCH(kernel, grid, block, stream, ...) ::adapler_emu::launch(kernel, grid, block, stream, __VA_ARGS__)
#else
#define ADAPLER_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace
{

// ------------------------------------------------------------------------------------------------
// Workspace layout (offsets from the 16-byte aligned base; each region 256-byte aligned so that a
// future change of one region does not shift the alignment of the others):
//   [0, 256)                 int32 newLen (S', atomicMax target of pass 1)
//   [256, 256 + A(4B))       int32 counts[B]
//   [.., .. + A(4BS))        int32 idx[B*S]  (kept source slots of row b at idx[b*S + 0 .. count_b))
// ------------------------------------------------------------------------------------------------
constexpr size_t kRegionAlign = 256;
constexpr size_t kWorkspaceAlign = 16;

constexpr size_t alignUp(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

struct WorkspaceLayout
{
    size_t countsOffset;
    size_t idxOffset;
    size_t total;
};

WorkspaceLayout workspaceLayout(int64_t batch, int64_t seq)
{
    WorkspaceLayout l{};
    l.countsOffset = kRegionAlign;
    l.idxOffset = l.countsOffset + alignUp(sizeof(int32_t) * static_cast<size_t>(batch), kRegionAlign);
    l.total = l.idxOffset + alignUp(sizeof(int32_t) * static_cast<size_t>(batch) * static_cast<size_t>(seq), kRegionAlign);
    return l;
}

struct WorkspaceView
{
    int32_t* newLen;
    int32_t* counts;
    int32_t* idx;
};

WorkspaceView workspaceView(void const* ws, int64_t batch, int64_t seq)
{
    WorkspaceLayout const l = workspaceLayout(batch, seq);
    auto* base = static_cast<char*>(const_cast<void*>(ws));
    return WorkspaceView{reinterpret_cast<int32_t*>(base), reinterpret_cast<int32_t*>(base + l.countsOffset),
        reinterpret_cast<int32_t*>(base + l.idxOffset)};
}

// Last CUDA error per host thread, for adaplerGetLastCudaError().
thread_local int tLastCudaError = 0;

int cudaFail(cudaError_t e)
{
    tLastCudaError = static_cast<int>(e);
    return ADAPLER_ERR_CUDA;
}

// Checked after every launch: reports launch-configuration errors (and any sticky error of the
// context) instead of letting the next unrelated CUDA call discover them.
int checkLaunch()
{
    cudaError_t const e = cudaGetLastError();
    return e == cudaSuccess ? ADAPLER_SUCCESS : cudaFail(e);
}

size_t elementSize(int dtype)
{
    switch (dtype)
    {
    case ADAPLER_DTYPE_FLOAT32: return 4;
    case ADAPLER_DTYPE_FLOAT16: return 2;
    default: return 0;
    }
}

bool isAligned(void const* p, size_t a)
{
    return reinterpret_cast<uintptr_t>(p) % a == 0;
}

// ----------------------------------------------------------------------------------- validation --
// Shared by every entry point so that the same bad argument gives the same code everywhere. The
// order (dtype, pointers, shape, length, eta, workspace) is fixed and documented in the README.

int validateShape(int64_t batch, int64_t seq)
{
    if (batch < 0 || seq < 0 || batch > std::numeric_limits<int32_t>::max())
    {
        return ADAPLER_ERR_BAD_SHAPE;
    }
    if (seq > ADAPLER_TC_MAX_SEQ_LEN)
    {
        return ADAPLER_ERR_SEQ_TOO_LONG;
    }
    return ADAPLER_SUCCESS;
}

int validateHidden(int64_t batch, int64_t seq, int64_t hiddenSize, size_t elemSize)
{
    // One hidden row must stay below 2 GiB (the gather indexes a row with 32-bit offsets).
    if (hiddenSize <= 0 || hiddenSize > std::numeric_limits<int32_t>::max() / static_cast<int64_t>(elemSize))
    {
        return ADAPLER_ERR_BAD_SHAPE;
    }
    // B * max(S,1) * H * elemSize must fit in int64 (it is the byte extent of the output buffer).
    int64_t const rows = batch * (seq > 0 ? seq : 1);
    int64_t const maxI64 = std::numeric_limits<int64_t>::max();
    if (rows > 0 && hiddenSize > maxI64 / rows / static_cast<int64_t>(elemSize))
    {
        return ADAPLER_ERR_BAD_SHAPE;
    }
    return ADAPLER_SUCCESS;
}

int validateEta(float eta)
{
    // eta lies in [0, 1] (docs/INTERFACES.md). eta = 0 needs no special case: delta = 0 / n = 0 keeps every
    // live token (the scores are >= 0). Written so that NaN fails too.
    return (eta >= 0.0f && eta <= 1.0f) ? ADAPLER_SUCCESS : ADAPLER_ERR_BAD_ETA;
}

int validateWorkspace(void const* ws, size_t bytes, int64_t batch, int64_t seq)
{
    if (!isAligned(ws, kWorkspaceAlign))
    {
        return ADAPLER_ERR_MISALIGNED;
    }
    return bytes < workspaceLayout(batch, seq).total ? ADAPLER_ERR_WORKSPACE_TOO_SMALL : ADAPLER_SUCCESS;
}

// -------------------------------------------------------------------------------------- kernels --

__device__ __forceinline__ int warpSum(int v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
    {
        v += __shfl_xor_sync(0xffffffffu, v, off);
    }
    return v;
}

// Pass 1: one block per row. kThreads is a multiple of 32 and at most 1024 (so at most 32 warps,
// whose totals thread-serially scan in shared memory).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) tokenCompactPass1Kernel(float const* __restrict__ scores,
    int32_t const* __restrict__ mask, int32_t seq, float eta, int32_t* __restrict__ counts,
    int32_t* __restrict__ idx, int32_t* __restrict__ newLen)
{
    static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block must be whole warps, <= 1024 threads");
    constexpr int kWarps = kThreads / 32;
    __shared__ int sWarp[kWarps];
    __shared__ int sLive;

    int const tid = threadIdx.x;
    int const lane = tid & 31;
    int const warp = tid >> 5;
    int64_t const rowOffset = static_cast<int64_t>(blockIdx.x) * seq;
    int32_t const* rowMask = mask + rowOffset;
    float const* rowScores = scores + rowOffset;
    int32_t* rowIdx = idx + rowOffset;

    // n = number of live slots (mask == 1) of the row (block reduction). For 0/1 masks this is the
    // contract's sum of the mask; counting ones also matches the reference for any other values.
    int part = 0;
    for (int i = tid; i < seq; i += kThreads)
    {
        part += rowMask[i] == 1 ? 1 : 0;
    }
    part = warpSum(part);
    if (lane == 0)
    {
        sWarp[warp] = part;
    }
    __syncthreads();
    if (warp == 0)
    {
        int v = lane < kWarps ? sWarp[lane] : 0;
        v = warpSum(v);
        if (lane == 0)
        {
            sLive = v;
        }
    }
    __syncthreads();
    // IEEE fp32 quotient, as NumPy's float32(eta) / float32(n). n == 0 gives +inf, or NaN for eta = 0: no
    // score passes either (slot 0 is kept only where mask == 1, i.e. never for a fully dead 0/1 row).
    float const delta = __fdiv_rn(eta, __int2float_rn(sLive));

    // Order-preserving compaction, one tile of kThreads slots at a time: warp ballot + popc give
    // the in-warp exclusive prefix, the per-warp totals (shared memory) the in-tile offset, and
    // `carry` the count of all earlier tiles.
    int carry = 0;
    unsigned const lanesBelow = (1u << lane) - 1u;
    for (int base = 0; base < seq; base += kThreads) // uniform trip count: every lane reaches the ballot
    {
        int const i = base + tid;
        bool keep = false;
        if (i < seq)
        {
            keep = rowMask[i] == 1 && (i == 0 || rowScores[i] >= delta);
        }
        unsigned const ballot = __ballot_sync(0xffffffffu, keep);
        if (lane == 0)
        {
            sWarp[warp] = __popc(ballot);
        }
        __syncthreads();
        int warpOffset = 0;
        int tileTotal = 0;
#pragma unroll
        for (int w = 0; w < kWarps; ++w)
        {
            int const t = sWarp[w];
            warpOffset += w < warp ? t : 0;
            tileTotal += t;
        }
        if (keep)
        {
            rowIdx[carry + warpOffset + __popc(ballot & lanesBelow)] = i;
        }
        carry += tileTotal;
        __syncthreads(); // sWarp is rewritten by the next tile
    }

    if (tid == 0)
    {
        counts[blockIdx.x] = carry;
        // S' >= 1 even when every row is fully dead (keeps shapes non-empty).
        atomicMax(newLen, carry > 1 ? carry : 1);
    }
}

template <typename V>
__device__ __forceinline__ V zeroVec();
template <>
__device__ __forceinline__ uint4 zeroVec<uint4>()
{
    return make_uint4(0u, 0u, 0u, 0u);
}
template <>
__device__ __forceinline__ uint2 zeroVec<uint2>()
{
    return make_uint2(0u, 0u);
}
template <>
__device__ __forceinline__ uint32_t zeroVec<uint32_t>()
{
    return 0u;
}
template <>
__device__ __forceinline__ uint16_t zeroVec<uint16_t>()
{
    return 0;
}

constexpr int kPass2Warps = 8; // warps (= output slots) per block of pass 2

// Pass 2: one warp per output slot (b, j). The hidden row is copied as raw bytes in units of V
// (16, 8, 4 or 2 bytes, the widest that the two base pointers and the row size allow), so fp32 and
// fp16 (and any H, e.g. 1023) share this kernel and the copy is bit-exact.
// slotsPerRow: the launch's row extent (device mode: max(S,1); host mode: S').
// S' comes from *dNewLen when it is not null (device mode), else from hostNewLen.
template <typename V>
__global__ void __launch_bounds__(kPass2Warps * 32) tokenCompactPass2Kernel(char const* __restrict__ hidden,
    int32_t const* __restrict__ positions, int32_t seq, int32_t rowVecs, int32_t slotsPerRow, int64_t totalSlots,
    int32_t const* __restrict__ counts, int32_t const* __restrict__ idx, int32_t const* __restrict__ dNewLen,
    int32_t hostNewLen, char* __restrict__ hiddenOut, int32_t* __restrict__ maskOut,
    int32_t* __restrict__ positionsOut, int64_t* __restrict__ newLenOut64, int32_t* __restrict__ newLenOut32)
{
    int32_t const newLen = dNewLen != nullptr ? *dNewLen : hostNewLen;
    if (blockIdx.x == 0 && threadIdx.x == 0)
    {
        // The TensorRT size tensor, written from the device: no host round trip inside enqueue.
        if (newLenOut64 != nullptr)
        {
            *newLenOut64 = newLen;
        }
        if (newLenOut32 != nullptr)
        {
            *newLenOut32 = newLen;
        }
    }

    int64_t const slot = static_cast<int64_t>(blockIdx.x) * kPass2Warps + (threadIdx.x >> 5);
    if (slot >= totalSlots)
    {
        return;
    }
    int32_t const b = static_cast<int32_t>(slot / slotsPerRow);
    int32_t const j = static_cast<int32_t>(slot % slotsPerRow);
    if (j >= newLen)
    {
        return; // device mode: the grid covers the upper bound, slots past S' have nothing to do
    }
    int const lane = threadIdx.x & 31;
    int64_t const outSlot = static_cast<int64_t>(b) * newLen + j;
    V* dst = reinterpret_cast<V*>(hiddenOut) + outSlot * rowVecs;
    int32_t const count = counts[b];
    if (j < count)
    {
        int32_t const src = idx[static_cast<int64_t>(b) * seq + j];
        int64_t const inSlot = static_cast<int64_t>(b) * seq + src;
        V const* s = reinterpret_cast<V const*>(hidden) + inSlot * rowVecs;
#pragma unroll 4
        for (int32_t k = lane; k < rowVecs; k += 32)
        {
            dst[k] = s[k];
        }
        if (lane == 0)
        {
            maskOut[outSlot] = 1;
            positionsOut[outSlot] = positions[inSlot];
        }
    }
    else
    {
        V const z = zeroVec<V>();
#pragma unroll 4
        for (int32_t k = lane; k < rowVecs; k += 32)
        {
            dst[k] = z;
        }
        if (lane == 0)
        {
            maskOut[outSlot] = 0;
            positionsOut[outSlot] = -1;
        }
    }
}

// Writes S' = 1 where there is no row at all (B == 0): pass 1 launches no block then.
__global__ void setNewLenKernel(int32_t* newLen, int32_t value)
{
    *newLen = value;
}

int launchPass1(float const* scores, int32_t const* mask, int64_t batch, int64_t seq, float eta, WorkspaceView ws,
    cudaStream_t stream)
{
    if (batch == 0)
    {
        ADAPLER_LAUNCH(setNewLenKernel, dim3(1), dim3(1), stream, ws.newLen, 1);
        return checkLaunch();
    }
    cudaError_t const e = cudaMemsetAsync(ws.newLen, 0, sizeof(int32_t), stream);
    if (e != cudaSuccess)
    {
        return cudaFail(e);
    }
    dim3 const grid(static_cast<unsigned>(batch));
    int32_t const s = static_cast<int32_t>(seq);
    // Block size by row length: enough threads to cover short rows in one tile, no idle warps.
    if (seq <= 128)
    {
        ADAPLER_LAUNCH(tokenCompactPass1Kernel<128>, grid, dim3(128), stream, scores, mask, s, eta, ws.counts, ws.idx,
            ws.newLen);
    }
    else if (seq <= 512)
    {
        ADAPLER_LAUNCH(tokenCompactPass1Kernel<256>, grid, dim3(256), stream, scores, mask, s, eta, ws.counts, ws.idx,
            ws.newLen);
    }
    else
    {
        ADAPLER_LAUNCH(tokenCompactPass1Kernel<512>, grid, dim3(512), stream, scores, mask, s, eta, ws.counts, ws.idx,
            ws.newLen);
    }
    return checkLaunch();
}

template <typename V>
int launchPass2Typed(void const* hidden, int32_t const* positions, int64_t batch, int64_t seq, int64_t rowBytes,
    int32_t slotsPerRow, WorkspaceView ws, int32_t const* dNewLen, int32_t hostNewLen, void* hiddenOut,
    int32_t* maskOut, int32_t* positionsOut, int64_t* newLenOut64, int32_t* newLenOut32, cudaStream_t stream)
{
    int64_t const totalSlots = batch * slotsPerRow;
    // At least one block so that the size tensor is written even for B == 0.
    int64_t const blocks = totalSlots > 0 ? (totalSlots + kPass2Warps - 1) / kPass2Warps : 1;
    if (blocks > std::numeric_limits<int32_t>::max())
    {
        return ADAPLER_ERR_BAD_SHAPE;
    }
    ADAPLER_LAUNCH(tokenCompactPass2Kernel<V>, dim3(static_cast<unsigned>(blocks)), dim3(kPass2Warps * 32), stream,
        static_cast<char const*>(hidden), positions, static_cast<int32_t>(seq),
        static_cast<int32_t>(rowBytes / static_cast<int64_t>(sizeof(V))), slotsPerRow, totalSlots,
        static_cast<int32_t const*>(ws.counts), static_cast<int32_t const*>(ws.idx), dNewLen, hostNewLen,
        static_cast<char*>(hiddenOut), maskOut, positionsOut, newLenOut64, newLenOut32);
    return checkLaunch();
}

int launchPass2(void const* hidden, int32_t const* positions, size_t elemSize, int64_t batch, int64_t seq,
    int64_t hiddenSize, int32_t slotsPerRow, WorkspaceView ws, int32_t const* dNewLen, int32_t hostNewLen,
    void* hiddenOut, int32_t* maskOut, int32_t* positionsOut, int64_t* newLenOut64, int32_t* newLenOut32,
    cudaStream_t stream)
{
    int64_t const rowBytes = hiddenSize * static_cast<int64_t>(elemSize);
    auto fits = [&](size_t a) {
        return isAligned(hidden, a) && isAligned(hiddenOut, a) && rowBytes % static_cast<int64_t>(a) == 0;
    };
    if (fits(16))
    {
        return launchPass2Typed<uint4>(hidden, positions, batch, seq, rowBytes, slotsPerRow, ws, dNewLen, hostNewLen,
            hiddenOut, maskOut, positionsOut, newLenOut64, newLenOut32, stream);
    }
    if (fits(8))
    {
        return launchPass2Typed<uint2>(hidden, positions, batch, seq, rowBytes, slotsPerRow, ws, dNewLen, hostNewLen,
            hiddenOut, maskOut, positionsOut, newLenOut64, newLenOut32, stream);
    }
    if (fits(4))
    {
        return launchPass2Typed<uint32_t>(hidden, positions, batch, seq, rowBytes, slotsPerRow, ws, dNewLen,
            hostNewLen, hiddenOut, maskOut, positionsOut, newLenOut64, newLenOut32, stream);
    }
    // fp16 with odd H: rows start at 2-byte boundaries only.
    return launchPass2Typed<uint16_t>(hidden, positions, batch, seq, rowBytes, slotsPerRow, ws, dNewLen, hostNewLen,
        hiddenOut, maskOut, positionsOut, newLenOut64, newLenOut32, stream);
}

// Checks of the pass-2 arguments, and of the pass-1 arguments too when `withPass1` (the
// convenience call). Order, first failure wins: dtype, null pointers, shape, sequence length,
// hidden size, eta, alignment, workspace (pass 1 alone: the same without dtype and hidden size).
int validateArgs(void const* hidden, int32_t const* positions, int dtype, int64_t batch, int64_t seq,
    int64_t hiddenSize, void const* workspace, size_t workspaceBytes, void const* hiddenOut, int32_t const* maskOut,
    int32_t const* positionsOut, bool withPass1, float const* scores, int32_t const* mask, float eta)
{
    size_t const es = elementSize(dtype);
    if (es == 0)
    {
        return ADAPLER_ERR_BAD_DTYPE;
    }
    // Empty tensors may come with null pointers: inputs when B*S == 0, outputs when B == 0. The
    // shape is checked first so that a negative extent is not mistaken for an empty one.
    int st = validateShape(batch, seq);
    bool const noInput = st == ADAPLER_SUCCESS && batch * seq == 0;
    bool const noOutput = st == ADAPLER_SUCCESS && batch == 0;
    if (workspace == nullptr
        || (!noInput && (hidden == nullptr || positions == nullptr || (withPass1 && (scores == nullptr || mask == nullptr))))
        || (!noOutput && (hiddenOut == nullptr || maskOut == nullptr || positionsOut == nullptr)))
    {
        return ADAPLER_ERR_NULL_POINTER;
    }
    if (st != ADAPLER_SUCCESS)
    {
        return st;
    }
    if ((st = validateHidden(batch, seq, hiddenSize, es)) != ADAPLER_SUCCESS)
    {
        return st;
    }
    if (withPass1 && (st = validateEta(eta)) != ADAPLER_SUCCESS)
    {
        return st;
    }
    if (!isAligned(hidden, es) || !isAligned(hiddenOut, es) || !isAligned(positions, 4) || !isAligned(maskOut, 4)
        || !isAligned(positionsOut, 4) || (withPass1 && (!isAligned(scores, 4) || !isAligned(mask, 4))))
    {
        return ADAPLER_ERR_MISALIGNED;
    }
    return validateWorkspace(workspace, workspaceBytes, batch, seq);
}

} // namespace

// =========================================================================================== C API

extern "C" {

ADAPLER_API const char* adaplerGetErrorString(int status)
{
    switch (status)
    {
    case ADAPLER_SUCCESS: return "ADAPLER_SUCCESS: no error";
    case ADAPLER_ERR_NULL_POINTER: return "ADAPLER_ERR_NULL_POINTER: a required pointer argument is NULL";
    case ADAPLER_ERR_BAD_DTYPE: return "ADAPLER_ERR_BAD_DTYPE: dtype must be ADAPLER_DTYPE_FLOAT32 (0) or ADAPLER_DTYPE_FLOAT16 (1)";
    case ADAPLER_ERR_BAD_ETA: return "ADAPLER_ERR_BAD_ETA: eta must lie in [0, 1]";
    case ADAPLER_ERR_SEQ_TOO_LONG: return "ADAPLER_ERR_SEQ_TOO_LONG: sequence length exceeds ADAPLER_TC_MAX_SEQ_LEN (8192)";
    case ADAPLER_ERR_BAD_SHAPE: return "ADAPLER_ERR_BAD_SHAPE: batch/seq must be >= 0 (batch <= 2^31-1), hidden size > 0, sizes must fit in int64";
    case ADAPLER_ERR_WORKSPACE_TOO_SMALL: return "ADAPLER_ERR_WORKSPACE_TOO_SMALL: workspace smaller than adaplerTokenCompactWorkspaceSize(batch, seq)";
    case ADAPLER_ERR_BAD_NEW_LEN: return "ADAPLER_ERR_BAD_NEW_LEN: new length must lie in [1, max(seq, 1)]";
    case ADAPLER_ERR_MISALIGNED: return "ADAPLER_ERR_MISALIGNED: a pointer is not aligned to its element size (workspace: 16 bytes)";
    case ADAPLER_ERR_CUDA: return "ADAPLER_ERR_CUDA: a CUDA call or kernel launch failed (see adaplerGetLastCudaError)";
    default: return "unknown adapler status code";
    }
}

ADAPLER_API int adaplerGetLastCudaError(void)
{
    return tLastCudaError;
}

ADAPLER_API int adaplerTokenCompactApiVersion(void)
{
    return ADAPLER_TC_API_VERSION;
}

ADAPLER_API int adaplerTokenCompactMaxSeqLen(void)
{
    return ADAPLER_TC_MAX_SEQ_LEN;
}

ADAPLER_API int adaplerSetDevice(int device)
{
    cudaError_t const e = cudaSetDevice(device);
    return e == cudaSuccess ? ADAPLER_SUCCESS : cudaFail(e);
}

ADAPLER_API size_t adaplerTokenCompactWorkspaceSize(int64_t batch, int64_t seq)
{
    if (validateShape(batch, seq) != ADAPLER_SUCCESS)
    {
        return 0;
    }
    return workspaceLayout(batch, seq).total;
}

ADAPLER_API int adaplerTokenCompactPass1(const float* scores, const int32_t* mask, int64_t batch, int64_t seq,
    float eta, void* workspace, size_t workspaceBytes, cudaStream_t stream)
{
    int st = validateShape(batch, seq);
    bool const noInput = st == ADAPLER_SUCCESS && batch * seq == 0; // empty tensors may be null
    if (workspace == nullptr || (!noInput && (scores == nullptr || mask == nullptr)))
    {
        return ADAPLER_ERR_NULL_POINTER;
    }
    if (st != ADAPLER_SUCCESS)
    {
        return st;
    }
    if ((st = validateEta(eta)) != ADAPLER_SUCCESS)
    {
        return st;
    }
    if (!isAligned(scores, 4) || !isAligned(mask, 4))
    {
        return ADAPLER_ERR_MISALIGNED;
    }
    if ((st = validateWorkspace(workspace, workspaceBytes, batch, seq)) != ADAPLER_SUCCESS)
    {
        return st;
    }
    return launchPass1(scores, mask, batch, seq, eta, workspaceView(workspace, batch, seq), stream);
}

ADAPLER_API int adaplerTokenCompactPass2Device(const void* hidden, const int32_t* positions, int dtype,
    int64_t batch, int64_t seq, int64_t hiddenSize, const void* workspace, size_t workspaceBytes, void* hiddenOut,
    int32_t* maskOut, int32_t* positionsOut, int64_t* newLenOut64, int32_t* newLenOut32, cudaStream_t stream)
{
    int const st = validateArgs(hidden, positions, dtype, batch, seq, hiddenSize, workspace, workspaceBytes,
        hiddenOut, maskOut, positionsOut, false, nullptr, nullptr, 0.0f);
    if (st != ADAPLER_SUCCESS)
    {
        return st;
    }
    if ((newLenOut64 != nullptr && !isAligned(newLenOut64, 8)) || (newLenOut32 != nullptr && !isAligned(newLenOut32, 4)))
    {
        return ADAPLER_ERR_MISALIGNED;
    }
    WorkspaceView const ws = workspaceView(workspace, batch, seq);
    int32_t const upper = seq > 0 ? static_cast<int32_t>(seq) : 1;
    return launchPass2(hidden, positions, elementSize(dtype), batch, seq, hiddenSize, upper, ws, ws.newLen, 0,
        hiddenOut, maskOut, positionsOut, newLenOut64, newLenOut32, stream);
}

ADAPLER_API int adaplerTokenCompactPass2(const void* hidden, const int32_t* positions, int dtype, int64_t batch,
    int64_t seq, int64_t hiddenSize, int32_t newLen, const void* workspace, size_t workspaceBytes, void* hiddenOut,
    int32_t* maskOut, int32_t* positionsOut, cudaStream_t stream)
{
    int const st = validateArgs(hidden, positions, dtype, batch, seq, hiddenSize, workspace, workspaceBytes,
        hiddenOut, maskOut, positionsOut, false, nullptr, nullptr, 0.0f);
    if (st != ADAPLER_SUCCESS)
    {
        return st;
    }
    int64_t const upper = seq > 0 ? seq : 1;
    if (newLen < 1 || newLen > upper)
    {
        return ADAPLER_ERR_BAD_NEW_LEN;
    }
    WorkspaceView const ws = workspaceView(workspace, batch, seq);
    return launchPass2(hidden, positions, elementSize(dtype), batch, seq, hiddenSize, newLen, ws, nullptr, newLen,
        hiddenOut, maskOut, positionsOut, nullptr, nullptr, stream);
}

ADAPLER_API int adaplerTokenCompactReadNewLen(
    const void* workspace, size_t workspaceBytes, int32_t* newLenHost, cudaStream_t stream)
{
    if (workspace == nullptr || newLenHost == nullptr)
    {
        return ADAPLER_ERR_NULL_POINTER;
    }
    if (!isAligned(workspace, kWorkspaceAlign))
    {
        return ADAPLER_ERR_MISALIGNED;
    }
    if (workspaceBytes < sizeof(int32_t))
    {
        return ADAPLER_ERR_WORKSPACE_TOO_SMALL;
    }
    cudaError_t e = cudaMemcpyAsync(newLenHost, workspace, sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
    if (e != cudaSuccess)
    {
        return cudaFail(e);
    }
    e = cudaStreamSynchronize(stream);
    return e == cudaSuccess ? ADAPLER_SUCCESS : cudaFail(e);
}

ADAPLER_API int adaplerTokenCompact(const void* hidden, const float* scores, const int32_t* mask,
    const int32_t* positions, int dtype, int64_t batch, int64_t seq, int64_t hiddenSize, float eta, void* workspace,
    size_t workspaceBytes, void* hiddenOut, int32_t* maskOut, int32_t* positionsOut, int32_t* newLenHost,
    cudaStream_t stream)
{
    // Validate everything before launching anything, so a bad argument leaves the outputs untouched.
    if (newLenHost == nullptr)
    {
        return elementSize(dtype) == 0 ? ADAPLER_ERR_BAD_DTYPE : ADAPLER_ERR_NULL_POINTER;
    }
    int st = validateArgs(hidden, positions, dtype, batch, seq, hiddenSize, workspace, workspaceBytes, hiddenOut,
        maskOut, positionsOut, true, scores, mask, eta);
    if (st != ADAPLER_SUCCESS)
    {
        return st;
    }
    WorkspaceView const ws = workspaceView(workspace, batch, seq);
    if ((st = launchPass1(scores, mask, batch, seq, eta, ws, stream)) != ADAPLER_SUCCESS)
    {
        return st;
    }
    int32_t const upper = seq > 0 ? static_cast<int32_t>(seq) : 1;
    if ((st = launchPass2(hidden, positions, elementSize(dtype), batch, seq, hiddenSize, upper, ws, ws.newLen, 0,
             hiddenOut, maskOut, positionsOut, nullptr, nullptr, stream))
        != ADAPLER_SUCCESS)
    {
        return st;
    }
    return adaplerTokenCompactReadNewLen(workspace, workspaceBytes, newLenHost, stream);
}

} // extern "C"
