/*
 * tokenCompact.h -- C API of the AdapLeR `TokenCompact` link (docs/INTERFACES.md, "The link").
 *
 * One implementation, two users:
 *   - the TensorRT IPluginV3 in tokenCompactPlugin.cpp (device-side S', no host sync), and
 *   - the Python runtime through ctypes (adapler_export/link_cuda.py), which needs S' on the host
 *     to size the next segment's input.
 *
 * Rule, per row b (exactly as the contract states it):
 *   n       = sum_i mask[b,i]                                (counted as mask == 1: same for 0/1 masks)
 *   delta   = float32(eta) / float32(n)                     IEEE fp32 division (round to nearest)
 *   keep_i  = mask[b,i] == 1 && (i == 0 || scores[b,i] >= delta)
 *   count_b = sum_i keep_i ;  S' = max(1, max_b count_b)
 * Outputs (order-preserving compaction, row stride S'):
 *   hidden_out[b,j,:] = hidden[b, idx_j, :] for j < count_b, zero for j >= count_b
 *   mask_out[b,j]     = j < count_b
 *   positions_out[b,j]= positions[b, idx_j] for j < count_b, -1 otherwise
 *
 * Two passes (the row stride of the outputs is S', which is known only after every row is counted):
 *   pass 1: one thread block per row: n, delta, keep flags, block-wide order-preserving scan; writes
 *           the kept source indices and count_b into the workspace and atomicMax-es S' into a device
 *           int inside the workspace.
 *   pass 2: one warp per output slot (b, j): gathers the kept hidden row (vectorised byte copy, so
 *           fp32 and fp16 share one kernel), zero-fills padding slots, writes mask_out/positions_out.
 *           S' comes either from the device int (no host round trip: the TensorRT plugin) or from
 *           the host (a caller that already read it).
 *
 * Memory: all pointers are device pointers, row-major contiguous; outputs must not overlap inputs:
 *   hidden [B,S,H] (fp32 or fp16), scores [B,S] fp32, mask [B,S] int32, positions [B,S] int32.
 *   Output buffers must hold the upper bound (S' <= max(S,1)):
 *   hidden_out >= B*max(S,1)*H elements, mask_out/positions_out >= B*max(S,1) int32; the result
 *   occupies their first B*S'*H (resp. B*S') elements, i.e. it is a dense [B,S',H] tensor.
 *   Nothing past the first B*S'*H / B*S' elements is written. Empty tensors may be passed as NULL:
 *   the inputs when B*S == 0, the outputs when B == 0 (the workspace never: it is at least 256 bytes).
 *
 * Argument checks, first failure wins: dtype, null pointers, shape (B, S >= 0), sequence length
 * (S <= ADAPLER_TC_MAX_SEQ_LEN), hidden size, eta, alignment, workspace size, then S' (host pass 2).
 *
 * Every function validates its arguments before touching CUDA, so argument errors are reported the
 * same way on machines without a GPU. All launches are asynchronous on `stream` except
 * adaplerTokenCompact() and adaplerTokenCompactReadNewLen(), which synchronise the stream once to
 * bring S' to the host.
 */
#ifndef ADAPLER_TOKEN_COMPACT_H
#define ADAPLER_TOKEN_COMPACT_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#if defined(_WIN32)
#define ADAPLER_API __declspec(dllexport)
#else
#define ADAPLER_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Longest sequence (S) accepted. Pass 1 walks a row in tiles of its block size, so this is not a
 * hardware limit: it covers every BERT-family max_position_embeddings in use (512 .. 8192) and is the
 * largest S the tests exercise. Above it the calls return ADAPLER_ERR_SEQ_TOO_LONG. */
#define ADAPLER_TC_MAX_SEQ_LEN 8192

/* Version of this C API (bumped when a signature or a layout changes). */
#define ADAPLER_TC_API_VERSION 1

/* dtype of `hidden` / `hidden_out`. Values are part of the ABI (ctypes uses them). */
typedef enum adaplerDType
{
    ADAPLER_DTYPE_FLOAT32 = 0,
    ADAPLER_DTYPE_FLOAT16 = 1
} adaplerDType;

/* Error codes. Values are part of the ABI (ctypes and the tests use them). */
typedef enum adaplerStatus
{
    ADAPLER_SUCCESS = 0,
    ADAPLER_ERR_NULL_POINTER = 1,         /* a required pointer is NULL                               */
    ADAPLER_ERR_BAD_DTYPE = 2,            /* dtype is not an adaplerDType value                        */
    ADAPLER_ERR_BAD_ETA = 3,              /* eta is not in [0, 1] (NaN included)                       */
    ADAPLER_ERR_SEQ_TOO_LONG = 4,         /* S > ADAPLER_TC_MAX_SEQ_LEN                                */
    ADAPLER_ERR_BAD_SHAPE = 5,            /* B < 0, S < 0, H <= 0, a row >= 2 GiB, or sizes overflow  */
    ADAPLER_ERR_WORKSPACE_TOO_SMALL = 6,  /* workspace bytes < adaplerTokenCompactWorkspaceSize(B, S)  */
    ADAPLER_ERR_BAD_NEW_LEN = 7,          /* host S' outside [1, max(S,1)]                             */
    ADAPLER_ERR_MISALIGNED = 8,           /* a pointer is not aligned to its element (workspace: 16 B) */
    ADAPLER_ERR_CUDA = 9                  /* a CUDA call or launch failed: adaplerGetLastCudaError()   */
} adaplerStatus;

/* Human-readable text for a status code (static storage; never NULL). */
ADAPLER_API const char* adaplerGetErrorString(int status);

/* The cudaError_t behind the last ADAPLER_ERR_CUDA returned on the calling thread (0 if none). */
ADAPLER_API int adaplerGetLastCudaError(void);

/* ADAPLER_TC_API_VERSION and ADAPLER_TC_MAX_SEQ_LEN, for callers that load the library dynamically. */
ADAPLER_API int adaplerTokenCompactApiVersion(void);
ADAPLER_API int adaplerTokenCompactMaxSeqLen(void);

/* cudaSetDevice() in this library's CUDA runtime. The library links the runtime statically, so its
 * current device is its own: a caller whose tensors live on a GPU other than 0 (ctypes next to
 * PyTorch/CuPy) selects that GPU here first, once per host thread. */
ADAPLER_API int adaplerSetDevice(int device);

/* Bytes of device workspace for a [B,S] problem (16-byte aligned base required). Returns 0 for
 * invalid shapes (B < 0, S < 0, S > max). The layout is private to the library. */
ADAPLER_API size_t adaplerTokenCompactWorkspaceSize(int64_t batch, int64_t seq);

/* Pass 1: counts and the kept source indices into `workspace`, S' into the device int of the
 * workspace. Must precede pass 2 on the same stream with the same workspace. */
ADAPLER_API int adaplerTokenCompactPass1(const float* scores, const int32_t* mask, int64_t batch, int64_t seq,
    float eta, void* workspace, size_t workspaceBytes, cudaStream_t stream);

/* Pass 2 with S' read on the device from the workspace (no host round trip). The grid covers the
 * upper bound B*max(S,1) slots and slots j >= S' exit at once. If `newLenOut64` / `newLenOut32` are
 * not NULL, S' is also written there (device pointers: the TensorRT size tensor, INT64 or INT32). */
ADAPLER_API int adaplerTokenCompactPass2Device(const void* hidden, const int32_t* positions, int dtype,
    int64_t batch, int64_t seq, int64_t hiddenSize, const void* workspace, size_t workspaceBytes, void* hiddenOut,
    int32_t* maskOut, int32_t* positionsOut, int64_t* newLenOut64, int32_t* newLenOut32, cudaStream_t stream);

/* Pass 2 with S' given by the host (the grid is exactly B*S' slots). `newLen` must be the value pass 1
 * produced; a larger value (<= max(S,1)) pads every row to it, a smaller one would truncate rows and
 * is the caller's bug (not detectable without a sync). */
ADAPLER_API int adaplerTokenCompactPass2(const void* hidden, const int32_t* positions, int dtype, int64_t batch,
    int64_t seq, int64_t hiddenSize, int32_t newLen, const void* workspace, size_t workspaceBytes, void* hiddenOut,
    int32_t* maskOut, int32_t* positionsOut, cudaStream_t stream);

/* Copy S' from the workspace to the host and synchronise `stream` (one device->host copy). */
ADAPLER_API int adaplerTokenCompactReadNewLen(const void* workspace, size_t workspaceBytes, int32_t* newLenHost,
    cudaStream_t stream);

/* Convenience: pass 1, pass 2 (device S'), then a single device->host copy of S' and one stream
 * synchronisation. Both kernels are queued back to back, so the host waits once, at the end. */
ADAPLER_API int adaplerTokenCompact(const void* hidden, const float* scores, const int32_t* mask,
    const int32_t* positions, int dtype, int64_t batch, int64_t seq, int64_t hiddenSize, float eta, void* workspace,
    size_t workspaceBytes, void* hiddenOut, int32_t* maskOut, int32_t* positionsOut, int32_t* newLenHost,
    cudaStream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ADAPLER_TOKEN_COMPACT_H */
