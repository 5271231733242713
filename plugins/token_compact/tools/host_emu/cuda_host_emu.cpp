/*
 * cuda_host_emu.cpp -- the scheduler and the few CUDA runtime calls behind cuda_host_emu.h.
 * Built with the kernel source into libadapler_token_compact_emu.so by tests/test_plugin_build.py
 * (see build_host_emulation() there); not part of any real build.
 */
#include "cuda_host_emu.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace adapler_emu
{
dim3 gThreadIdx;
dim3 gBlockIdx;
dim3 gBlockDim;
dim3 gGridDim;

namespace
{
enum class State
{
    kRunnable,
    kWaitWarp,
    kWaitBlock,
    kDone
};

enum class WarpOp
{
    kBallot,
    kShflXor
};

struct Thread
{
    ucontext_t ctx;
    State state = State::kRunnable;
    dim3 idx;
    // the pending warp operation of this lane, and its result once the warp is released
    WarpOp op = WarpOp::kBallot;
    unsigned mask = 0;
    int value = 0;
    int arg = 0;
    int result = 0;
};

constexpr size_t kStackBytes = 64 * 1024;

ucontext_t gScheduler;
std::vector<Thread> gThreads;
std::vector<std::vector<char>> gStacks;
size_t gCurrent = 0;
std::function<void()> const* gBody = nullptr;
cudaError_t gLastError = cudaSuccess;

[[noreturn]] void fail(char const* what)
{
    std::fprintf(stderr, "cuda_host_emu: %s (block %u,%u,%u)\n", what, gBlockIdx.x, gBlockIdx.y, gBlockIdx.z);
    std::abort();
}

void trampoline()
{
    (*gBody)();
    gThreads[gCurrent].state = State::kDone;
    // returning resumes uc_link, the scheduler
}

void yieldAs(State s)
{
    Thread& t = gThreads[gCurrent];
    t.state = s;
    swapcontext(&t.ctx, &gScheduler);
}

int warpOp(WarpOp op, unsigned mask, int value, int arg)
{
    if (mask != 0xffffffffu)
    {
        fail("only full-warp masks are emulated");
    }
    Thread& t = gThreads[gCurrent];
    t.op = op;
    t.mask = mask;
    t.value = value;
    t.arg = arg;
    yieldAs(State::kWaitWarp);
    return gThreads[gCurrent].result;
}

// Releases the warps whose 32 lanes all wait on a warp operation (computing every lane's result) and
// the block if all its live threads wait on __syncthreads(). Returns whether anything was released.
bool release()
{
    size_t const n = gThreads.size();
    bool released = false;
    for (size_t w = 0; w * 32 < n; ++w)
    {
        size_t const lo = w * 32;
        size_t const hi = lo + 32 <= n ? lo + 32 : n;
        size_t waiting = 0;
        for (size_t i = lo; i < hi; ++i)
        {
            waiting += gThreads[i].state == State::kWaitWarp ? 1 : 0;
        }
        if (waiting == 0)
        {
            continue;
        }
        if (waiting != 32)
        {
            continue; // other lanes still running or elsewhere: decided below (deadlock check)
        }
        WarpOp const op = gThreads[lo].op;
        unsigned ballotBits = 0;
        for (size_t i = lo; i < hi; ++i)
        {
            if (gThreads[i].op != op)
            {
                fail("lanes of one warp are in different warp operations");
            }
            ballotBits |= (gThreads[i].value != 0 ? 1u : 0u) << (i - lo);
        }
        for (size_t i = lo; i < hi; ++i)
        {
            Thread& t = gThreads[i];
            t.result = op == WarpOp::kBallot ? static_cast<int>(ballotBits)
                                             : gThreads[lo + ((i - lo) ^ static_cast<size_t>(t.arg & 31))].value;
            t.state = State::kRunnable;
        }
        released = true;
    }
    bool anyBlock = false;
    bool allBlockOrDone = true;
    for (Thread const& t : gThreads)
    {
        anyBlock |= t.state == State::kWaitBlock;
        allBlockOrDone &= t.state == State::kWaitBlock || t.state == State::kDone;
    }
    if (anyBlock && allBlockOrDone)
    {
        for (Thread& t : gThreads)
        {
            if (t.state == State::kWaitBlock)
            {
                t.state = State::kRunnable;
            }
        }
        released = true;
    }
    return released;
}

void runBlock(dim3 block)
{
    size_t const n = static_cast<size_t>(block.x) * block.y * block.z;
    gThreads.assign(n, Thread{});
    if (gStacks.size() < n)
    {
        gStacks.resize(n);
    }
    for (size_t i = 0; i < n; ++i)
    {
        Thread& t = gThreads[i];
        t.idx = dim3(static_cast<unsigned>(i % block.x), static_cast<unsigned>((i / block.x) % block.y),
            static_cast<unsigned>(i / (static_cast<size_t>(block.x) * block.y)));
        gStacks[i].resize(kStackBytes);
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = gStacks[i].data();
        t.ctx.uc_stack.ss_size = kStackBytes;
        t.ctx.uc_link = &gScheduler;
        makecontext(&t.ctx, trampoline, 0);
    }
    for (;;)
    {
        bool ran = false;
        for (size_t i = 0; i < n; ++i)
        {
            if (gThreads[i].state != State::kRunnable)
            {
                continue;
            }
            gCurrent = i;
            gThreadIdx = gThreads[i].idx;
            ran = true;
            swapcontext(&gScheduler, &gThreads[i].ctx);
        }
        bool allDone = true;
        for (Thread const& t : gThreads)
        {
            allDone &= t.state == State::kDone;
        }
        if (allDone)
        {
            return;
        }
        if (!release() && !ran)
        {
            fail("deadlock: a barrier that can never be released (divergent __syncthreads or warp operation)");
        }
    }
}
} // namespace

void syncthreads()
{
    yieldAs(State::kWaitBlock);
}

unsigned ballot(unsigned mask, bool pred)
{
    return static_cast<unsigned>(warpOp(WarpOp::kBallot, mask, pred ? 1 : 0, 0));
}

int shflXor(unsigned mask, int value, int laneMask)
{
    return warpOp(WarpOp::kShflXor, mask, value, laneMask);
}

int atomicMaxInt(int* address, int value)
{
    int const old = *address; // one OS thread: no race to guard against
    if (value > old)
    {
        *address = value;
    }
    return old;
}

void runGrid(dim3 grid, dim3 block, std::function<void()> const& body)
{
    unsigned long long const threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || grid.x > 0x7fffffffu
        || grid.y > 65535u || grid.z > 65535u)
    {
        gLastError = cudaErrorInvalidConfiguration;
        return;
    }
    gGridDim = grid;
    gBlockDim = block;
    gBody = &body;
    for (unsigned z = 0; z < grid.z; ++z)
    {
        for (unsigned y = 0; y < grid.y; ++y)
        {
            for (unsigned x = 0; x < grid.x; ++x)
            {
                gBlockIdx = dim3(x, y, z);
                runBlock(block);
            }
        }
    }
    gBody = nullptr;
}
} // namespace adapler_emu

// ------------------------------------------------------------- the CUDA runtime calls the kernel file makes
extern "C" {

cudaError_t cudaGetLastError(void)
{
    cudaError_t const e = adapler_emu::gLastError;
    adapler_emu::gLastError = cudaSuccess;
    return e;
}

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t /*stream*/)
{
    std::memset(devPtr, value, count);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, void const* src, size_t count, enum cudaMemcpyKind /*kind*/, cudaStream_t /*stream*/)
{
    std::memcpy(dst, src, count);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t /*stream*/)
{
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}

char const* cudaGetErrorString(cudaError_t error)
{
    return error == cudaSuccess ? "no error (host emulation)" : "error (host emulation)";
}

} // extern "C"
