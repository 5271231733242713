/*
 * plugin_harness.cpp -- plays TensorRT's side against the TokenCompact plugin library, on a CPU.
 *
 *   plugin_harness <libadapler_plugins.so> <a copy of that file at another path>
 *
 * tests/test_plugin_build.py builds the library from the real plugin source (tokenCompactPlugin.cpp,
 * against the stand-in NvInferRuntime.h in this folder) and the real kernel source compiled as host
 * C++ under tools/host_emu, builds this program with -rdynamic, and runs it. What TensorRT provides to a
 * plugin library -- getPluginRegistry(), the IExprBuilder / IDimensionExpr functions, a logger finder --
 * this program provides, so the library loads here as it loads into a TensorRT process: with dlopen()
 * (Triton, trtexec --staticPlugins) and through IPluginRegistry::loadLibrary (getCreators(),
 * setLoggerFinder()). Then it drives the plugin like the builder and the runtime do and checks the
 * results against TensorRT's rules and a reference implementation of the link rule
 * (docs/INTERFACES.md). It prints every failed check and ends with `N passed, M failed`.
 *
 * What this shows: the plugin's logic and wiring (registration, fields, types, formats, shapes and
 * size-tensor rules, workspace, serialization, enqueue writing the outputs bit for bit). What it does
 * not: the plugin inside a real TensorRT engine, nor the kernels on a GPU (see the plugin README).
 */
#include "NvInferRuntime.h" // the stand-in of this folder
#include "tokenCompact.h"   // constants only; the library's C API is looked up with dlsym

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

using namespace nvinfer1;

#if defined(ADAPLER_SIZE_TENSOR_INT32)
constexpr DataType kSIZE_TYPE = DataType::kINT32;
#else
constexpr DataType kSIZE_TYPE = DataType::kINT64;
#endif
#if defined(ADAPLER_REGISTER_EMPTY_NAMESPACE)
constexpr char const* kREGISTRATION_NAMESPACE = "";
#else
constexpr char const* kREGISTRATION_NAMESPACE = "adapler";
#endif
constexpr int32_t kDEFAULT_OPT_SEQ = 32; // the plugin's documented default (README)

// ===================================================================================== bookkeeping
namespace
{
int gPassed = 0;
int gFailed = 0;

bool check(bool ok, std::string const& what)
{
    ok ? ++gPassed : ++gFailed;
    if (!ok)
    {
        std::printf("FAIL: %s\n", what.c_str());
    }
    return ok;
}

std::string str(int64_t v)
{
    return std::to_string(v);
}

// =========================================================================== TensorRT's side: logging
struct Logger : ILogger
{
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        messages.emplace_back(severity, msg);
    }
    // Whether a message of this severity containing `text` arrived since the last call; clears them.
    bool received(Severity severity, char const* text)
    {
        bool const found = std::any_of(messages.begin(), messages.end(),
            [&](auto const& m) { return m.first == severity && m.second.find(text) != std::string::npos; });
        messages.clear();
        return found;
    }
    std::vector<std::pair<Severity, std::string>> messages;
};

struct LoggerFinder : ILoggerFinder
{
    ILogger* findLogger() override
    {
        return &logger;
    }
    Logger logger;
};

LoggerFinder gLoggerFinder;

// ========================================================================== TensorRT's side: registry
using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
using SetLoggerFinderFn = void (*)(ILoggerFinder*);

std::string keyOf(IPluginCreatorV3One const& c)
{
    return std::string(c.getPluginName()) + "/" + c.getPluginVersion() + "/" + c.getPluginNamespace();
}

// Keeps creators under (name, version, namespace) -- a V3 creator's own namespace -- and, like
// TensorRT, refuses a second creator under a key already taken. loadLibrary() follows TensorRT's
// plugin-library protocol: dlopen, look up getCreators and setLoggerFinder, hand over the logger
// finder, register every creator getCreators() returns (the load fails if one is taken).
class Registry : public IPluginRegistry
{
public:
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        namespaceArguments.emplace_back(pluginNamespace != nullptr ? pluginNamespace : "<null>");
        if (std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0)
        {
            return false;
        }
        auto& c = static_cast<IPluginCreatorV3One&>(creator);
        return mCreators.emplace(keyOf(c), &c).second;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const pluginName, AsciiChar const* const pluginVersion,
        AsciiChar const* const pluginNamespace = "") noexcept override
    {
        auto it = mCreators.find(std::string(pluginName) + "/" + pluginVersion + "/" + pluginNamespace);
        return it == mCreators.end() ? nullptr : it->second;
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        for (auto it = mCreators.begin(); it != mCreators.end(); ++it)
        {
            if (it->second == &creator)
            {
                mCreators.erase(it);
                return true;
            }
        }
        return false;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        mList.clear();
        for (auto const& kv : mCreators)
        {
            mList.push_back(kv.second);
        }
        *numCreators = static_cast<int32_t>(mList.size());
        return mList.data();
    }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        return getAllCreators(numCreators);
    }
    PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept override
    {
        void* handle = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
        if (handle == nullptr)
        {
            return nullptr;
        }
        auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(handle, "getCreators"));
        auto setFinder = reinterpret_cast<SetLoggerFinderFn>(dlsym(handle, "setLoggerFinder"));
        if (getCreators == nullptr || setFinder == nullptr)
        {
            dlclose(handle);
            return nullptr;
        }
        setFinder(&gLoggerFinder);
        int32_t n = -1;
        IPluginCreatorInterface* const* creators = getCreators(n);
        lastGetCreatorsCount = n;
        std::vector<IPluginCreatorInterface*> taken;
        for (int32_t i = 0; i < n; ++i)
        {
            if (!registerCreator(*creators[i], static_cast<IPluginCreatorV3One*>(creators[i])->getPluginNamespace()))
            {
                for (IPluginCreatorInterface* c : taken) // all or nothing
                {
                    deregisterCreator(*c);
                }
                dlclose(handle);
                return nullptr;
            }
            taken.push_back(creators[i]);
        }
        mLibraries[handle] = taken;
        return handle;
    }
    void deregisterLibrary(PluginLibraryHandle handle) noexcept override
    {
        for (IPluginCreatorInterface* c : mLibraries[handle])
        {
            deregisterCreator(*c);
        }
        mLibraries.erase(handle);
        dlclose(handle);
    }
    size_t size() const
    {
        return mCreators.size();
    }
    // not used by the plugin
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return -1;
    }

    std::vector<std::string> namespaceArguments; // of every registerCreator() call
    int32_t lastGetCreatorsCount = -1;

private:
    std::map<std::string, IPluginCreatorV3One*> mCreators;
    std::map<void*, std::vector<IPluginCreatorInterface*>> mLibraries;
    mutable std::vector<IPluginCreatorInterface*> mList;
};

Registry& registry()
{
    static Registry r; // function-local: ready whatever the order of static initialisation
    return r;
}
} // namespace

extern "C" IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

// ======================================================================= TensorRT's side: dimensions
// An expression knows how to evaluate itself for given values of the symbols (B, S, size tensors) and
// what it depends on: TensorRT requires a size tensor's `opt` not to depend on a size tensor, and the
// project's contract (issue 9) further wants it independent of the input dims.
namespace
{
using Env = std::map<std::string, int64_t>;

struct Expr : IDimensionExpr
{
    std::function<int64_t(Env const&)> eval;
    bool constant = false;
    int64_t value = 0;
    bool sizeTensor = false;
    bool dependsOnSizeTensor = false;
    bool dependsOnInputDim = false;
};

struct SizeTensorDecl
{
    int32_t outputIndex;
    Expr const* opt;
    Expr const* upper;
};

struct Builder : IExprBuilder
{
    explicit Builder(int32_t nbOutputs_)
        : nbOutputs(nbOutputs_)
    {
    }
    Expr* make()
    {
        pool.push_back(std::make_unique<Expr>());
        return pool.back().get();
    }
    // An input dimension that is only known at run time.
    Expr const* inputDim(std::string const& name)
    {
        Expr* e = make();
        e->dependsOnInputDim = true;
        e->eval = [name](Env const& env) { return env.at(name); };
        return e;
    }
    // A dimension that is another plugin's size tensor (an input behind an earlier link).
    Expr const* sizeTensorDim(std::string const& name)
    {
        Expr* e = make();
        e->sizeTensor = e->dependsOnSizeTensor = true;
        e->eval = [name](Env const& env) { return env.at(name); };
        return e;
    }

    int32_t nbOutputs;
    std::string sizeSymbol = "S'"; // the symbol the next declared size tensor evaluates to
    std::vector<std::unique_ptr<Expr>> pool;
    std::vector<SizeTensorDecl> declared;
    std::vector<std::string> refusals;
};

Builder& asBuilder(IExprBuilder* b)
{
    return *static_cast<Builder*>(b);
}

Expr const& asExpr(IDimensionExpr const& e)
{
    return static_cast<Expr const&>(e);
}

int64_t evalAt(IDimensionExpr const* e, Env const& env)
{
    return asExpr(*e).eval(env);
}

int64_t apply(DimensionOperation op, int64_t x, int64_t y)
{
    switch (op)
    {
    case DimensionOperation::kSUM: return x + y;
    case DimensionOperation::kPROD: return x * y;
    case DimensionOperation::kMAX: return std::max(x, y);
    case DimensionOperation::kMIN: return std::min(x, y);
    case DimensionOperation::kSUB: return x - y;
    case DimensionOperation::kEQUAL: return x == y ? 1 : 0;
    case DimensionOperation::kLESS: return x < y ? 1 : 0;
    case DimensionOperation::kFLOOR_DIV: return x / y - ((x % y != 0 && (x < 0) != (y < 0)) ? 1 : 0);
    case DimensionOperation::kCEIL_DIV: return x / y + ((x % y != 0 && (x < 0) == (y < 0)) ? 1 : 0);
    }
    return 0;
}
} // namespace

bool IDimensionExpr::isConstant() const noexcept
{
    return asExpr(*this).constant;
}

int64_t IDimensionExpr::getConstantValue() const noexcept
{
    return isConstant() ? asExpr(*this).value : std::numeric_limits<int64_t>::min();
}

bool IDimensionExpr::isSizeTensor() const noexcept
{
    return asExpr(*this).sizeTensor;
}

IDimensionExpr const* IExprBuilder::constant(int64_t value) noexcept
{
    Expr* e = asBuilder(this).make();
    e->constant = true;
    e->value = value;
    e->eval = [value](Env const&) { return value; };
    return e;
}

IDimensionExpr const* IExprBuilder::operation(
    DimensionOperation op, IDimensionExpr const& first, IDimensionExpr const& second) noexcept
{
    Expr const& a = asExpr(first);
    Expr const& b = asExpr(second);
    if (static_cast<int32_t>(op) < 0 || static_cast<int32_t>(op) > static_cast<int32_t>(DimensionOperation::kCEIL_DIV))
    {
        return nullptr; // TensorRT: "Returns nullptr if op is not a valid DimensionOperation"
    }
    Expr* e = asBuilder(this).make();
    e->dependsOnSizeTensor = a.dependsOnSizeTensor || b.dependsOnSizeTensor;
    e->dependsOnInputDim = a.dependsOnInputDim || b.dependsOnInputDim;
    if (a.constant && b.constant) // folded, as TensorRT does: max(16, 1) is a build-time constant
    {
        e->constant = true;
        e->value = apply(op, a.value, b.value);
    }
    Expr const* pa = &a;
    Expr const* pb = &b;
    e->eval = [op, pa, pb](Env const& env) { return apply(op, pa->eval(env), pb->eval(env)); };
    return e;
}

IDimensionExpr const* IExprBuilder::declareSizeTensor(
    int32_t outputIndex, IDimensionExpr const& opt, IDimensionExpr const& upper)
{
    Builder& b = asBuilder(this);
    Expr const& o = asExpr(opt);
    if (outputIndex < 0 || outputIndex >= b.nbOutputs)
    {
        b.refusals.emplace_back("size tensor output index out of range");
        return nullptr;
    }
    if (o.dependsOnSizeTensor) // NvInferRuntime.h: "opt ... Must not depend on a size tensor."
    {
        b.refusals.emplace_back("opt depends on a size tensor");
        return nullptr;
    }
    b.declared.push_back({outputIndex, &o, &asExpr(upper)});
    Expr* e = b.make();
    e->sizeTensor = e->dependsOnSizeTensor = true;
    std::string const symbol = b.sizeSymbol;
    e->eval = [symbol](Env const& env) { return env.at(symbol); };
    return e;
}

// ====================================================================== the rule, written out literally
namespace
{
struct Problem
{
    int64_t batch, seq, hidden;
    size_t elemSize; // 4: fp32, 2: fp16 (the gather is a byte copy either way)
    float eta;
    std::vector<uint8_t> x;   // [B,S,H]
    std::vector<float> scores;
    std::vector<int32_t> mask, positions;
};

struct Result
{
    int64_t newLen;
    std::vector<uint8_t> x; // [B,S',H]
    std::vector<int32_t> mask, positions;
};

Result reference(Problem const& p)
{
    std::vector<std::vector<int64_t>> kept(static_cast<size_t>(p.batch));
    int64_t newLen = 1; // S' >= 1 even when every row is dead
    for (int64_t b = 0; b < p.batch; ++b)
    {
        int32_t n = 0;
        for (int64_t i = 0; i < p.seq; ++i)
        {
            n += p.mask[b * p.seq + i] == 1 ? 1 : 0;
        }
        volatile float const delta = p.eta / static_cast<float>(n); // IEEE fp32, no excess precision
        for (int64_t i = 0; i < p.seq; ++i)
        {
            if (p.mask[b * p.seq + i] == 1 && (i == 0 || p.scores[b * p.seq + i] >= delta))
            {
                kept[b].push_back(i);
            }
        }
        newLen = std::max<int64_t>(newLen, static_cast<int64_t>(kept[b].size()));
    }
    size_t const row = static_cast<size_t>(p.hidden) * p.elemSize;
    Result r{newLen, std::vector<uint8_t>(static_cast<size_t>(p.batch * newLen) * row, 0),
        std::vector<int32_t>(static_cast<size_t>(p.batch * newLen), 0),
        std::vector<int32_t>(static_cast<size_t>(p.batch * newLen), -1)};
    for (int64_t b = 0; b < p.batch; ++b)
    {
        for (size_t j = 0; j < kept[b].size(); ++j)
        {
            int64_t const src = b * p.seq + kept[b][j];
            int64_t const dst = b * newLen + static_cast<int64_t>(j);
            std::memcpy(&r.x[static_cast<size_t>(dst) * row], &p.x[static_cast<size_t>(src) * row], row);
            r.mask[dst] = 1;
            r.positions[dst] = p.positions[src];
        }
    }
    return r;
}

// Rows of several kinds, scores a softmax over the live slots (like the CP scores), with exact ties at
// delta in the "ties" rows; hidden as random bytes.
enum class RowKind
{
    kPrefix,
    kHoles,
    kClsOnly,
    kDead,
    kTies
};

Problem makeProblem(std::mt19937& rng, int64_t batch, int64_t seq, int64_t hidden, size_t elemSize, float eta)
{
    Problem p{batch, seq, hidden, elemSize, eta, {}, {}, {}, {}};
    size_t const n = static_cast<size_t>(batch * seq);
    p.x.resize(n * static_cast<size_t>(hidden) * elemSize);
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& v : p.x)
    {
        v = static_cast<uint8_t>(byte(rng));
    }
    p.scores.assign(n, 0.0F);
    p.mask.assign(n, 0);
    p.positions.assign(n, -1);
    std::uniform_real_distribution<float> unit(0.0F, 1.0F);
    std::normal_distribution<float> logit(0.0F, 2.0F);
    for (int64_t b = 0; b < batch; ++b)
    {
        auto const kind = static_cast<RowKind>(b % 5);
        int32_t* mask = &p.mask[b * seq];
        float* scores = &p.scores[b * seq];
        int64_t const live = seq > 0 ? 1 + static_cast<int64_t>(unit(rng) * static_cast<float>(seq - 1)) : 0;
        for (int64_t i = 0; i < seq; ++i)
        {
            bool const isLive = kind == RowKind::kHoles ? unit(rng) < 0.6F : kind != RowKind::kDead && i < live;
            mask[i] = isLive ? 1 : 0;
        }
        int32_t nLive = 0;
        float sum = 0.0F;
        for (int64_t i = 0; i < seq; ++i)
        {
            if (mask[i] == 1)
            {
                scores[i] = std::exp(logit(rng));
                sum += scores[i];
                ++nLive;
            }
        }
        for (int64_t i = 0; i < seq; ++i)
        {
            scores[i] = mask[i] == 1 ? scores[i] / sum : 0.0F;
            p.positions[b * seq + i] = mask[i] == 1 ? static_cast<int32_t>(rng() % 100000U) : -1; // any labels
        }
        if (nLive == 0)
        {
            continue;
        }
        float const delta = eta / static_cast<float>(nLive);
        for (int64_t i = 0, k = 0; i < seq; ++i)
        {
            if (mask[i] != 1)
            {
                continue;
            }
            if (kind == RowKind::kClsOnly) // every token but [CLS] below the threshold (for eta > 0)
            {
                scores[i] = i == 0 ? 1.0F : delta * 0.5F;
            }
            else if (kind == RowKind::kTies) // exactly at, just below and just above delta
            {
                float const at[3] = {delta, std::nextafter(delta, 0.0F), std::nextafter(delta, 1.0F)};
                scores[i] = at[k++ % 3];
            }
        }
    }
    return p;
}

// ============================================================================= plugin-side helpers
IPluginCreatorV3One* gCreator = nullptr; // the registered one

PluginTensorDesc tensorDesc(std::vector<int64_t> const& dims, DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.dims.d[i] = dims[i];
    }
    d.type = type;
    d.format = format;
    d.scale = -1.0F;
    return d;
}

// A build-time descriptor: run-time dims -1, bounds from the profile (min 1 .. max).
DynamicPluginTensorDesc dynDesc(std::vector<int64_t> const& maxDims, DataType type)
{
    DynamicPluginTensorDesc d{};
    std::vector<int64_t> const runtime(maxDims.size(), -1);
    d.desc = tensorDesc(runtime, type);
    d.min = d.opt = d.max = d.desc.dims;
    for (size_t i = 0; i < maxDims.size(); ++i)
    {
        d.min.d[i] = 1;
        d.opt.d[i] = d.max.d[i] = maxDims[i];
    }
    return d;
}

struct Profile
{
    DynamicPluginTensorDesc in[4];
    DynamicPluginTensorDesc out[4];
};

Profile profile(int64_t maxBatch, int64_t maxSeq, int64_t hidden, DataType h)
{
    int64_t const upper = std::max<int64_t>(maxSeq, 1);
    return Profile{{dynDesc({maxBatch, maxSeq, hidden}, h), dynDesc({maxBatch, maxSeq}, DataType::kFLOAT),
                       dynDesc({maxBatch, maxSeq}, DataType::kINT32), dynDesc({maxBatch, maxSeq}, DataType::kINT32)},
        {dynDesc({maxBatch, upper, hidden}, h), dynDesc({maxBatch, upper}, DataType::kINT32),
            dynDesc({maxBatch, upper}, DataType::kINT32), dynDesc({}, kSIZE_TYPE)}};
}

// Deep copy of a field collection: what TensorRT writes into the engine and reads back.
struct StoredFields
{
    StoredFields(StoredFields const&) = delete; // `fields` points into the members
    explicit StoredFields(PluginFieldCollection const& fc)
    {
        for (int32_t i = 0; i < fc.nbFields; ++i)
        {
            PluginField const& f = fc.fields[i];
            size_t const bytes = f.type == PluginFieldType::kFLOAT64 || f.type == PluginFieldType::kINT64 ? 8
                : f.type == PluginFieldType::kCHAR                                                     ? 1
                                                                                                       : 4;
            names.emplace_back(f.name);
            auto const* bytesOf = static_cast<uint8_t const*>(f.data);
            data.emplace_back(bytesOf, bytesOf + bytes * f.length);
            fields.emplace_back(nullptr, nullptr, f.type, f.length);
        }
        for (size_t i = 0; i < fields.size(); ++i) // after the vectors stopped growing
        {
            fields[i].name = names[i].c_str();
            fields[i].data = data[i].data();
        }
        collection = PluginFieldCollection{static_cast<int32_t>(fields.size()), fields.data()};
    }
    template <typename T>
    bool get(char const* name, T& value) const
    {
        for (size_t i = 0; i < names.size(); ++i)
        {
            if (names[i] == name && data[i].size() == sizeof(T))
            {
                std::memcpy(&value, data[i].data(), sizeof(T));
                return true;
            }
        }
        return false;
    }
    std::vector<std::string> names;
    std::vector<std::vector<uint8_t>> data;
    std::vector<PluginField> fields;
    PluginFieldCollection collection{};
};

using PluginPtr = std::unique_ptr<IPluginV3>;

PluginPtr create(std::vector<PluginField> const& fields, TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return PluginPtr(gCreator->createPlugin("link", &fc, phase));
}

PluginPtr withEta(float eta)
{
    return create({PluginField("eta", &eta, PluginFieldType::kFLOAT32, 1)});
}

// A section needs its plugin; a plugin broken enough not to be created fails the check, not the run.
bool created(PluginPtr const& p, std::string const& section)
{
    return check(p != nullptr, section + ": plugin created");
}

template <typename T>
T* cap(IPluginV3* p, PluginCapabilityType t)
{
    return static_cast<T*>(p->getCapabilityInterface(t));
}

IPluginV3OneBuild* build(IPluginV3* p)
{
    return cap<IPluginV3OneBuild>(p, PluginCapabilityType::kBUILD);
}

IPluginV3OneRuntime* runtime(IPluginV3* p)
{
    return cap<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
}

StoredFields serialized(IPluginV3* p)
{
    return StoredFields(*runtime(p)->getFieldsToSerialize());
}

struct ResourceContext : IPluginResourceContext
{
    IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
};

using WorkspaceSizeFn = size_t (*)(int64_t, int64_t);
WorkspaceSizeFn gWorkspaceSize = nullptr; // the library's adaplerTokenCompactWorkspaceSize

// ========================================================================================== checks

void checkLoading(void* lib, char const* path, char const* copyPath)
{
    // dlopen (done by main, as Triton does): the static registration took place, once
    check(registry().size() == 1 && registry().namespaceArguments.size() == 1,
        "dlopen registers exactly one creator (got " + str(static_cast<int64_t>(registry().size())) + ")");
    check(!registry().namespaceArguments.empty() && registry().namespaceArguments[0] == kREGISTRATION_NAMESPACE,
        std::string("registered with the namespace argument \"") + kREGISTRATION_NAMESPACE + "\"");
    gCreator = static_cast<IPluginCreatorV3One*>(registry().getCreator("TokenCompact", "1", "adapler"));
    if (!check(gCreator != nullptr, "lookup (TokenCompact, 1, adapler) finds the creator"))
    {
        return;
    }
    auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(lib, "getCreators"));
    check(getCreators != nullptr && dlsym(lib, "setLoggerFinder") != nullptr,
        "the library exports getCreators and setLoggerFinder");
    if (getCreators != nullptr)
    {
        int32_t n = -1;
        getCreators(n);
        check(n == 0, "getCreators offers nothing while the static registration stands (got " + str(n) + ")");
    }

    // IPluginRegistry::loadLibrary on the same file (trtexec --dynamicPlugins after a dlopen, or an
    // engine's serialized library): harmless, still one creator, and the logger finder is taken
    void* handle = registry().loadLibrary(path);
    check(handle != nullptr && registry().lastGetCreatorsCount == 0 && registry().size() == 1,
        "loadLibrary after dlopen succeeds without a second registration");
    check(withEta(2.0F) == nullptr && gLoggerFinder.logger.received(ILogger::Severity::kERROR, "eta"),
        "after setLoggerFinder the plugin reports to TensorRT's logger");
    if (handle != nullptr)
    {
        registry().deregisterLibrary(handle); // TensorRT dlclose()s; the static registration stays valid
        check(registry().size() == 1 && gCreator->getPluginName() != nullptr, "deregisterLibrary leaves the creator");
    }

    // Another copy of the library (another file): its static registration is refused (the key is taken),
    // so its getCreators() offers its own creator -- which a loader can register once the key is free.
    void* copy = dlopen(copyPath, RTLD_NOW | RTLD_LOCAL);
    auto copyGetCreators = copy != nullptr ? reinterpret_cast<GetCreatorsFn>(dlsym(copy, "getCreators")) : nullptr;
    check(copyGetCreators != nullptr && copyGetCreators != getCreators, "a second copy loads with its own entry points");
    if (copyGetCreators == nullptr)
    {
        return;
    }
    int32_t n = -1;
    IPluginCreatorInterface* const* creators = copyGetCreators(n);
    auto* copyCreator = n == 1 ? static_cast<IPluginCreatorV3One*>(creators[0]) : nullptr;
    check(copyCreator != nullptr && copyCreator != gCreator && keyOf(*copyCreator) == "TokenCompact/1/adapler",
        "a copy whose static registration was refused offers its creator through getCreators");
    check(registry().loadLibrary(copyPath) == nullptr && registry().size() == 1,
        "loadLibrary of the copy is refused while the key is taken (TensorRT: creator exists already)");
    registry().deregisterCreator(*gCreator);
    void* copyHandle = registry().loadLibrary(copyPath);
    check(copyHandle != nullptr && registry().getCreator("TokenCompact", "1", "adapler") == copyCreator,
        "with the key free, loadLibrary registers the creator getCreators returns");
    if (copyHandle != nullptr)
    {
        registry().deregisterLibrary(copyHandle);
    }
    check(registry().size() == 0, "deregisterLibrary removes what loadLibrary registered");
    registry().registerCreator(*gCreator, "adapler"); // back to the dlopen()ed library for what follows
    dlclose(copy);
}

void checkCreator()
{
    InterfaceInfo const info = gCreator->getInterfaceInfo();
    check(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1 && info.minor == 0,
        "creator is an IPluginCreatorV3One 1.0");
    check(keyOf(*gCreator) == "TokenCompact/1/adapler",
        "creator name TokenCompact, version 1, namespace adapler");
    PluginFieldCollection const* names = gCreator->getFieldNames();
    bool const fieldsOk = names != nullptr && names->nbFields == 2 && std::strcmp(names->fields[0].name, "eta") == 0
        && names->fields[0].type == PluginFieldType::kFLOAT32 && names->fields[0].length == 1
        && std::strcmp(names->fields[1].name, "opt_seq") == 0 && names->fields[1].type == PluginFieldType::kINT32
        && names->fields[1].length == 1;
    check(fieldsOk, "advertised fields: eta float32[1], opt_seq int32[1]");

    // eta: [0, 1]; -0.0 is 0 for IEEE comparisons
    float const good[] = {0.0F, -0.0F, 1e-30F, 1e-3F, 0.37F, 0.5F, std::nextafter(1.0F, 0.0F), 1.0F};
    for (float eta : good)
    {
        PluginPtr p = withEta(eta);
        float stored = -1.0F;
        check(p != nullptr && serialized(p.get()).get("eta", stored) && std::memcmp(&stored, &eta, 4) == 0,
            "eta = " + std::to_string(eta) + " accepted and serialized as given");
    }
    float const bad[] = {std::nextafter(1.0F, 2.0F), 1.5F, std::nextafter(-0.0F, -1.0F), -0.1F, -1.0F,
        std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
        -std::numeric_limits<float>::infinity()};
    for (float eta : bad)
    {
        check(withEta(eta) == nullptr, "eta = " + std::to_string(eta) + " refused");
    }
    check(create({}) == nullptr, "missing eta refused");
    {
        PluginFieldCollection empty{0, nullptr};
        check(PluginPtr(gCreator->createPlugin("x", &empty, TensorRTPhase::kBUILD)) == nullptr
                && PluginPtr(gCreator->createPlugin("x", nullptr, TensorRTPhase::kBUILD)) == nullptr,
            "empty or null field collection refused");
    }
    int32_t const etaInt = 1;
    check(create({PluginField("eta", &etaInt, PluginFieldType::kINT32, 1)}) == nullptr, "eta of type int32 refused");
    double const etaD = 0.25;
    char const ns[] = "adapler";
    PluginPtr p = create({PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 7),
        PluginField("eta", &etaD, PluginFieldType::kFLOAT64, 1)});
    float stored = 0.0F;
    check(p != nullptr && serialized(p.get()).get("eta", stored) && stored == 0.25F,
        "float64 eta and an unknown extra field accepted");

    // opt_seq: optional, int32 (int64 too), in [1, 8192]
    float const eta = 0.5F;
    PluginField const etaField("eta", &eta, PluginFieldType::kFLOAT32, 1);
    int32_t opt = -1;
    p = create({etaField});
    check(p != nullptr && serialized(p.get()).get("opt_seq", opt) && opt == kDEFAULT_OPT_SEQ,
        "opt_seq defaults to " + str(kDEFAULT_OPT_SEQ));
    for (int32_t v : {1, 48, ADAPLER_TC_MAX_SEQ_LEN})
    {
        p = create({etaField, PluginField("opt_seq", &v, PluginFieldType::kINT32, 1)});
        check(p != nullptr && serialized(p.get()).get("opt_seq", opt) && opt == v, "opt_seq = " + str(v) + " accepted");
    }
    int64_t const opt64 = 64;
    p = create({etaField, PluginField("opt_seq", &opt64, PluginFieldType::kINT64, 1)});
    check(p != nullptr && serialized(p.get()).get("opt_seq", opt) && opt == 64, "opt_seq as int64 accepted");
    for (int32_t v : {0, -3, ADAPLER_TC_MAX_SEQ_LEN + 1})
    {
        check(create({etaField, PluginField("opt_seq", &v, PluginFieldType::kINT32, 1)}) == nullptr,
            "opt_seq = " + str(v) + " refused");
    }
    float const optF = 32.0F;
    check(create({etaField, PluginField("opt_seq", &optF, PluginFieldType::kFLOAT32, 1)}) == nullptr,
        "opt_seq of type float32 refused");
    int64_t const negativeWs = -1;
    check(create({etaField, PluginField("workspace_bytes", &negativeWs, PluginFieldType::kINT64, 1)}) == nullptr,
        "negative workspace_bytes refused");
}

void checkIdentityAndClone()
{
    float const eta = 0.375F;
    int32_t const opt = 40;
    PluginPtr p = create({PluginField("eta", &eta, PluginFieldType::kFLOAT32, 1),
        PluginField("opt_seq", &opt, PluginFieldType::kINT32, 1)});
    if (!check(p != nullptr, "plugin created"))
    {
        return;
    }
    auto* core = cap<IPluginV3OneCore>(p.get(), PluginCapabilityType::kCORE);
    check(core != nullptr && build(p.get()) != nullptr && runtime(p.get()) != nullptr,
        "core, build and runtime capabilities");
    check(std::strcmp(p->getInterfaceInfo().kind, "PLUGIN") == 0
            && std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0
            && std::strcmp(build(p.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
            && std::strcmp(runtime(p.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0,
        "interface kinds PLUGIN, PLUGIN_V3ONE_CORE/BUILD/RUNTIME");
    check(std::strcmp(core->getPluginName(), "TokenCompact") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0
            && std::strcmp(core->getPluginNamespace(), "adapler") == 0,
        "plugin name/version/namespace match the creator");
    check(build(p.get())->getNbOutputs() == 4, "4 outputs");

    Profile pr = profile(4, 64, 8, DataType::kFLOAT);
    build(p.get())->configurePlugin(pr.in, 4, pr.out, 4);
    ResourceContext context;
    PluginPtr cl(p->clone());
    PluginPtr att(runtime(p.get())->attachToContext(&context));
    PluginFieldCollection const* orig = runtime(p.get())->getFieldsToSerialize();
    for (IPluginV3* q : {cl.get(), att.get()})
    {
        if (!check(q != nullptr, "clone / attachToContext returns a plugin"))
        {
            continue;
        }
        PluginFieldCollection const* ser = runtime(q)->getFieldsToSerialize();
        bool same = ser->nbFields == orig->nbFields;
        for (int32_t i = 0; same && i < ser->nbFields; ++i)
        {
            size_t const bytes = ser->fields[i].type == PluginFieldType::kINT64 ? 8 : 4;
            PluginField const& a = ser->fields[i];
            PluginField const& b = orig->fields[i];
            same = std::strcmp(a.name, b.name) == 0 && a.data != b.data && std::memcmp(a.data, b.data, bytes) == 0;
        }
        check(same, "the copy serializes the same values from its own storage");
    }
}

void checkTypes()
{
    PluginPtr p = withEta(0.5F);
    if (!created(p, "types"))
    {
        return;
    }
    IPluginV3OneBuild* b = build(p.get());
    for (DataType h : {DataType::kFLOAT, DataType::kHALF})
    {
        DataType in[4] = {h, DataType::kFLOAT, DataType::kINT32, DataType::kINT32};
        DataType out[4] = {};
        check(b->getOutputDataTypes(out, 4, in, 4) == 0 && out[0] == h && out[1] == DataType::kINT32
                && out[2] == DataType::kINT32 && out[3] == kSIZE_TYPE,
            "output types: hidden's, int32, int32, the size tensor type");
    }
    // every other type at every input is refused
    for (int32_t pos = 0; pos < 4; ++pos)
    {
        for (int32_t t = 0; t <= static_cast<int32_t>(DataType::kE8M0); ++t)
        {
            DataType in[4] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32, DataType::kINT32};
            in[pos] = static_cast<DataType>(t);
            bool const allowed = pos == 0 ? (in[0] == DataType::kFLOAT || in[0] == DataType::kHALF)
                : pos == 1                ? in[1] == DataType::kFLOAT
                                          : in[pos] == DataType::kINT32;
            DataType out[4] = {};
            check((b->getOutputDataTypes(out, 4, in, 4) == 0) == allowed,
                "getOutputDataTypes input " + str(pos) + " type " + str(t) + (allowed ? " accepted" : " refused"));
        }
    }
    DataType in[4] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32, DataType::kINT32};
    DataType out[4] = {};
    check(b->getOutputDataTypes(out, 3, in, 4) != 0 && b->getOutputDataTypes(out, 4, in, 3) != 0,
        "getOutputDataTypes refuses wrong tensor counts");
}

// The whole grid: position x type x format, hidden fp32 and fp16.
void checkFormats()
{
    PluginPtr p = withEta(0.5F);
    if (!created(p, "formats"))
    {
        return;
    }
    IPluginV3OneBuild* b = build(p.get());
    for (DataType h : {DataType::kFLOAT, DataType::kHALF})
    {
        DataType const good[8] = {h, DataType::kFLOAT, DataType::kINT32, DataType::kINT32, h, DataType::kINT32,
            DataType::kINT32, kSIZE_TYPE};
        for (int32_t pos = 0; pos < 8; ++pos)
        {
            for (int32_t t = 0; t <= static_cast<int32_t>(DataType::kE8M0); ++t)
            {
                for (TensorFormat f : {TensorFormat::kLINEAR, TensorFormat::kCHW2, TensorFormat::kHWC8})
                {
                    DynamicPluginTensorDesc io[8];
                    for (int32_t k = 0; k < 8; ++k)
                    {
                        io[k] = dynDesc({4, 16}, good[k]);
                    }
                    io[pos].desc.type = static_cast<DataType>(t);
                    io[pos].desc.format = f;
                    DataType const type = io[pos].desc.type;
                    bool const typeOk = pos == 0 ? (type == DataType::kFLOAT || type == DataType::kHALF) : type == good[pos];
                    bool const want = f == TensorFormat::kLINEAR && typeOk;
                    check(b->supportsFormatCombination(pos, io, 4, 4) == want,
                        "supportsFormatCombination pos " + str(pos) + " type " + str(t) + " format "
                            + str(static_cast<int32_t>(f)) + " hidden " + str(static_cast<int32_t>(h)));
                }
            }
        }
    }
    DynamicPluginTensorDesc io[8];
    for (auto& d : io)
    {
        d = dynDesc({4, 16}, DataType::kINT32);
    }
    check(!b->supportsFormatCombination(8, io, 4, 4) && !b->supportsFormatCombination(-1, io, 4, 4)
            && !b->supportsFormatCombination(0, io, 3, 4),
        "supportsFormatCombination refuses out-of-range positions and wrong counts");
}

void checkShapes()
{
    float const eta = 0.5F;
    int32_t const opt = 24;
    PluginPtr p = create({PluginField("eta", &eta, PluginFieldType::kFLOAT32, 1),
        PluginField("opt_seq", &opt, PluginFieldType::kINT32, 1)});
    if (!created(p, "shapes"))
    {
        return;
    }
    IPluginV3OneBuild* b = build(p.get());

    // The harness's builder really enforces TensorRT's rule (else the checks below would prove nothing).
    {
        Builder eb(4);
        Expr const* sizeDim = eb.sizeTensorDim("S");
        check(eb.declareSizeTensor(3, *sizeDim, *sizeDim) == nullptr,
            "harness: an opt depending on a size tensor is refused");
    }

    // Link inputs with symbolic B and S (the first link: S is a network input dim), constant H; with
    // every dim constant; and with S a size tensor (every later link).
    enum class Case
    {
        kSymbolic,
        kConstant,
        kSizeTensorInput
    };
    for (Case c : {Case::kSymbolic, Case::kConstant, Case::kSizeTensorInput})
    {
        std::string const label = c == Case::kSymbolic ? "symbolic dims"
            : c == Case::kConstant                      ? "constant dims"
                                                        : "S a size tensor";
        Builder eb(4);
        IDimensionExpr const* B = c == Case::kConstant ? eb.constant(3) : eb.inputDim("B");
        IDimensionExpr const* S = c == Case::kConstant ? eb.constant(40) : c == Case::kSymbolic ? eb.inputDim("S")
                                                                                                 : eb.sizeTensorDim("S");
        DimsExprs in[4];
        in[0].nbDims = 3;
        in[0].d[0] = B;
        in[0].d[1] = S;
        in[0].d[2] = eb.constant(768);
        for (int32_t k = 1; k < 4; ++k)
        {
            in[k].nbDims = 2;
            in[k].d[0] = B;
            in[k].d[1] = S;
        }
        DimsExprs out[4];
        int32_t const rc = b->getOutputShapes(in, 4, nullptr, 0, out, 4, eb);
        std::string const refused = eb.refusals.empty() ? std::string() : " (refused: " + eb.refusals[0] + ")";
        if (!check(rc == 0 && eb.declared.size() == 1 && eb.refusals.empty(),
                label + ": getOutputShapes succeeds, declaring one size tensor" + refused))
        {
            continue;
        }
        SizeTensorDecl const& d = eb.declared[0];
        check(d.outputIndex == 3, label + ": the size tensor is output 3");
        check(d.opt->isConstant() && d.opt->getConstantValue() == opt && !d.opt->dependsOnSizeTensor
                && !d.opt->dependsOnInputDim,
            label + ": opt is the constant opt_seq, independent of size tensors and input dims");
        for (int64_t s : {0, 1, 2, 17, 40, 512})
        {
            Env env{{"B", 3}, {"S", c == Case::kConstant ? 40 : s}, {"S'", 7}};
            int64_t const want = std::max<int64_t>(env.at("S"), 1);
            check(d.upper->eval(env) == want, label + ": upper = max(S, 1) at S = " + str(env.at("S")));
        }
        check(c != Case::kConstant || (d.upper->isConstant() && d.upper->getConstantValue() == 40),
            label + ": upper folds to a constant when S is one");
        Env env{{"B", 3}, {"S", 40}, {"S'", 7}};
        check(out[0].nbDims == 3 && evalAt(out[0].d[0], env) == 3 && out[0].d[1]->isSizeTensor()
                && evalAt(out[0].d[1], env) == 7 && out[0].d[2]->isConstant() && out[0].d[2]->getConstantValue() == 768,
            label + ": hidden_out is [B, S', H] with S' the size tensor");
        for (int32_t k = 1; k <= 2; ++k)
        {
            check(out[k].nbDims == 2 && evalAt(out[k].d[0], env) == 3 && out[k].d[1]->isSizeTensor()
                    && evalAt(out[k].d[1], env) == 7,
                label + ": mask_out / positions_out are [B, S']");
        }
        check(out[3].nbDims == 0, label + ": the size tensor is 0-D");
    }

    // Two links chained: the second one's input S is the first one's size tensor.
    {
        Builder eb(4);
        DimsExprs in[4];
        DimsExprs mid[4];
        DimsExprs out[4];
        in[0].nbDims = 3;
        in[0].d[0] = eb.inputDim("B");
        in[0].d[1] = eb.inputDim("S");
        in[0].d[2] = eb.constant(64);
        for (int32_t k = 1; k < 4; ++k)
        {
            in[k].nbDims = 2;
            in[k].d[0] = in[0].d[0];
            in[k].d[1] = in[0].d[1];
        }
        eb.sizeSymbol = "S1";
        bool ok = b->getOutputShapes(in, 4, nullptr, 0, mid, 4, eb) == 0;
        DimsExprs next[4] = {mid[0], mid[1], mid[1], mid[2]}; // hidden, scores, mask, positions of link 2
        eb.sizeSymbol = "S2";
        ok = ok && b->getOutputShapes(next, 4, nullptr, 0, out, 4, eb) == 0 && eb.declared.size() == 2;
        if (check(ok && eb.refusals.empty(), "two chained links: both declare their size tensor"))
        {
            Env env{{"B", 2}, {"S", 30}, {"S1", 12}, {"S2", 5}};
            check(eb.declared[1].upper->dependsOnSizeTensor && eb.declared[1].upper->eval(env) == 12,
                "link 2: upper = max(S1, 1), S1 the size tensor of link 1");
            check(evalAt(out[0].d[1], env) == 5 && evalAt(out[0].d[0], env) == 2, "link 2: hidden_out is [B, S2, H]");
        }
    }

    Builder eb(4);
    DimsExprs in[4];
    DimsExprs out[4];
    in[0].nbDims = 3;
    for (int32_t k = 0; k < 3; ++k)
    {
        in[0].d[k] = eb.constant(4);
    }
    for (int32_t k = 1; k < 4; ++k)
    {
        in[k] = in[0];
        in[k].nbDims = 2;
    }
    in[1].nbDims = 3;
    check(b->getOutputShapes(in, 4, nullptr, 0, out, 4, eb) != 0, "a 3-D scores input is refused");
    in[1].nbDims = 2;
    check(b->getOutputShapes(in, 3, nullptr, 0, out, 4, eb) != 0 && b->getOutputShapes(in, 4, nullptr, 0, out, 3, eb) != 0,
        "getOutputShapes refuses wrong tensor counts");
}

void checkWorkspace()
{
    PluginPtr p = withEta(0.5F);
    if (!created(p, "workspace"))
    {
        return;
    }
    IPluginV3OneBuild* b = build(p.get());
    auto ws = [&](Profile const& pr) { return b->getWorkspaceSize(pr.in, 4, pr.out, 4); };
    for (auto const& bs : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {8, 512}, {32, 128}, {3, 0}, {0, 7}, {2, 8192}})
    {
        Profile const pr = profile(bs.first, bs.second, 16, DataType::kHALF);
        size_t const got = ws(pr);
        size_t const minimum = static_cast<size_t>(4 * bs.first * bs.second + 4 * bs.first + 4); // idx, counts, S'
        check(got == gWorkspaceSize(bs.first, bs.second) && got >= minimum,
            "getWorkspaceSize for max [B, S] = [" + str(bs.first) + ", " + str(bs.second) + "]");
    }
    Profile pr = profile(8, 512, 16, DataType::kHALF);
    pr.in[0].max.d[1] = -1; // unknown max S: bounded by the kernel's limit
    check(ws(pr) == gWorkspaceSize(8, ADAPLER_TC_MAX_SEQ_LEN) && b->configurePlugin(pr.in, 4, pr.out, 4) == 0,
        "unknown max S: workspace for S = 8192, profile accepted");
    pr = profile(8, 512, 16, DataType::kHALF);
    pr.in[0].max.d[0] = -1; // unknown max B: cannot be bounded
    check(b->configurePlugin(pr.in, 4, pr.out, 4) != 0, "unknown max B: configurePlugin refuses the profile");
    pr = profile(2, ADAPLER_TC_MAX_SEQ_LEN + 1, 16, DataType::kHALF);
    check(b->configurePlugin(pr.in, 4, pr.out, 4) != 0, "max S > 8192: configurePlugin refuses the profile");

    // configurePlugin records the declaration (largest over the profiles) in the serialized fields
    PluginPtr q = withEta(0.5F);
    if (!created(q, "workspace record"))
    {
        return;
    }
    int64_t recorded = -1;
    check(serialized(q.get()).get("workspace_bytes", recorded) && recorded == 0,
        "workspace_bytes is 0 before configurePlugin");
    Profile const p1 = profile(8, 512, 16, DataType::kHALF);
    Profile const p2 = profile(32, 128, 16, DataType::kHALF);
    build(q.get())->configurePlugin(p1.in, 4, p1.out, 4);
    check(serialized(q.get()).get("workspace_bytes", recorded) && recorded == static_cast<int64_t>(gWorkspaceSize(8, 512)),
        "configurePlugin records the workspace it declares");
    build(q.get())->configurePlugin(p2.in, 4, p2.out, 4);
    int64_t const largest = static_cast<int64_t>(std::max(gWorkspaceSize(8, 512), gWorkspaceSize(32, 128)));
    check(serialized(q.get()).get("workspace_bytes", recorded) && recorded == largest,
        "with two profiles the larger declaration is kept");

    IPluginV3OneRuntime* rt = runtime(q.get());
    PluginTensorDesc in[4] = {tensorDesc({2, 9000, 4}, DataType::kHALF), tensorDesc({2, 9000}, DataType::kFLOAT),
        tensorDesc({2, 9000}, DataType::kINT32), tensorDesc({2, 9000}, DataType::kINT32)};
    check(rt->onShapeChange(in, 4, nullptr, 4) != 0, "onShapeChange refuses S > 8192");
    for (PluginTensorDesc& d : in)
    {
        d.dims.d[0] = 32;
        d.dims.d[1] = 128;
    }
    check(rt->onShapeChange(in, 4, nullptr, 4) == 0, "onShapeChange accepts shapes within the declared workspace");
    for (PluginTensorDesc& d : in)
    {
        d.dims.d[0] = 64;
        d.dims.d[1] = 512;
    }
    check(rt->onShapeChange(in, 4, nullptr, 4) != 0,
        "onShapeChange refuses shapes that need more than the declared workspace");
}

// ----------------------------------------------------------------------------------------- enqueue
struct Buffers
{
    std::vector<uint8_t> x;
    std::vector<int32_t> mask, positions;
    std::vector<int64_t> size;
    std::vector<uint8_t> workspace; // declared bytes + a poisoned tail, 16-byte aligned base
    size_t wsOffset = 0;
};

constexpr uint8_t kPOISON = 0xA5;
constexpr int32_t kPOISON32 = 0x7F7F7F7F;
constexpr size_t kTAIL = 256; // bytes checked past every buffer

bool allBytes(uint8_t const* p, size_t n, uint8_t v)
{
    return std::all_of(p, p + n, [v](uint8_t b) { return b == v; });
}

// Whether v[from..] all equal `value`.
bool allInts(std::vector<int32_t> const& v, size_t from, int32_t value)
{
    return std::all_of(v.begin() + static_cast<std::ptrdiff_t>(from), v.end(), [value](int32_t x) { return x == value; });
}

// enqueue() on the runtime plugin as TensorRT calls it: outputs sized for the declared upper bound
// (B * max(S,1)), the workspace exactly the declared size. Checks every byte written and not written.
void runEnqueue(IPluginV3* plugin, Problem const& p, size_t wsBytes, std::string const& label, bool expectRefusal = false)
{
    IPluginV3OneRuntime* rt = runtime(plugin);
    DataType const h = p.elemSize == 2 ? DataType::kHALF : DataType::kFLOAT;
    int64_t const upper = std::max<int64_t>(p.seq, 1);
    size_t const row = static_cast<size_t>(p.hidden) * p.elemSize;
    Buffers out;
    out.x.assign(static_cast<size_t>(p.batch * upper) * row + kTAIL, kPOISON);
    out.mask.assign(static_cast<size_t>(p.batch * upper) + kTAIL, kPOISON32);
    out.positions.assign(out.mask.size(), kPOISON32);
    out.size.assign(2, -7);
    out.workspace.assign(wsBytes + kTAIL + 16, kPOISON);
    out.wsOffset = (16 - reinterpret_cast<uintptr_t>(out.workspace.data()) % 16) % 16;

    PluginTensorDesc in[4] = {tensorDesc({p.batch, p.seq, p.hidden}, h), tensorDesc({p.batch, p.seq}, DataType::kFLOAT),
        tensorDesc({p.batch, p.seq}, DataType::kINT32), tensorDesc({p.batch, p.seq}, DataType::kINT32)};
    // data-dependent outputs: the plugin must not rely on their extent
    PluginTensorDesc desc[4] = {tensorDesc({p.batch, -1, p.hidden}, h), tensorDesc({p.batch, -1}, DataType::kINT32),
        tensorDesc({p.batch, -1}, DataType::kINT32), tensorDesc({}, kSIZE_TYPE)};
    void const* inputs[4] = {p.x.data(), p.scores.data(), p.mask.data(), p.positions.data()};
    void* outputs[4] = {out.x.data(), out.mask.data(), out.positions.data(), out.size.data()};
    int32_t const rc = rt->enqueue(in, desc, inputs, outputs, out.workspace.data() + out.wsOffset, nullptr);
    bool const tailsClean = allBytes(out.workspace.data() + out.wsOffset + wsBytes, kTAIL, kPOISON);
    if (expectRefusal)
    {
        check(rc != 0 && out.size[0] == -7 && allBytes(out.x.data(), out.x.size(), kPOISON)
                && allBytes(out.workspace.data(), out.workspace.size(), kPOISON),
            label + ": refused before anything is written");
        return;
    }
    Result const want = reference(p);
    // an INT32 size tensor is the low half of out.size[0] (little endian)
    int64_t const got = kSIZE_TYPE == DataType::kINT64 ? out.size[0] : static_cast<int32_t>(out.size[0]);
    bool sizeOk = got == want.newLen;
    if (kSIZE_TYPE == DataType::kINT32) // the high half of the -7 untouched
    {
        int32_t high = 0;
        std::memcpy(&high, reinterpret_cast<uint8_t const*>(out.size.data()) + 4, 4);
        sizeOk = sizeOk && high == -1;
    }
    size_t const n = static_cast<size_t>(p.batch * want.newLen);
    bool const dataOk = std::memcmp(out.x.data(), want.x.data(), want.x.size()) == 0
        && std::equal(want.mask.begin(), want.mask.end(), out.mask.begin())
        && std::equal(want.positions.begin(), want.positions.end(), out.positions.begin());
    bool const untouched = allBytes(out.x.data() + n * row, out.x.size() - n * row, kPOISON)
        && allInts(out.mask, n, kPOISON32) && allInts(out.positions, n, kPOISON32);
    check(rc == 0 && sizeOk && dataOk && untouched && tailsClean,
        label + ": rc " + str(rc) + ", S' " + str(got) + " (want " + str(want.newLen) + ")"
            + (dataOk ? "" : ", outputs differ from the reference") + (untouched ? "" : ", wrote past [B,S',...]")
            + (tailsClean ? "" : ", wrote past the workspace"));
}

void checkEnqueue()
{
    struct Shape
    {
        int64_t b, s, h;
        size_t elem;
    };
    std::vector<Shape> const shapes = {{1, 1, 64, 4}, {3, 17, 384, 2}, {8, 64, 768, 4}, {4, 128, 1023, 2},
        {2, 600, 64, 4}, {5, 33, 1020, 2}, {6, 40, 3, 2}, {3, 0, 8, 4}, {0, 5, 8, 2}};
    float const etas[] = {0.0F, 1e-3F, 0.37F, 0.5F, 1.0F};
    std::mt19937 rng(1234);
    int round = 0;
    for (Shape const& sh : shapes)
    {
        for (int k = 0; k < 2; ++k, ++round)
        {
            float const eta = etas[round % 5];
            // build phase: configure for a profile just covering this shape; serialize; runtime phase:
            // createPlugin from the stored fields, attachToContext, onShapeChange, enqueue -- as TensorRT.
            PluginPtr built = withEta(eta);
            if (!created(built, "enqueue eta=" + std::to_string(eta)))
            {
                continue;
            }
            Profile const pr = profile(sh.b, sh.s, sh.h, sh.elem == 2 ? DataType::kHALF : DataType::kFLOAT);
            size_t const declared = build(built.get())->getWorkspaceSize(pr.in, 4, pr.out, 4);
            build(built.get())->configurePlugin(pr.in, 4, pr.out, 4);
            StoredFields const engine = serialized(built.get());
            built.reset();
            PluginPtr deserialized = PluginPtr(gCreator->createPlugin("link", &engine.collection, TensorRTPhase::kRUNTIME));
            ResourceContext context;
            PluginPtr plugin(deserialized ? runtime(deserialized.get())->attachToContext(&context) : nullptr);
            std::string const label = "enqueue B=" + str(sh.b) + " S=" + str(sh.s) + " H=" + str(sh.h)
                + (sh.elem == 2 ? " fp16" : " fp32") + " eta=" + std::to_string(eta);
            if (!check(plugin != nullptr, label + ": runtime plugin from the serialized fields"))
            {
                continue;
            }
            Problem const prob = makeProblem(rng, sh.b, sh.s, sh.h, sh.elem, eta);
            PluginTensorDesc shapes4[4] = {tensorDesc({sh.b, sh.s, sh.h}, DataType::kFLOAT),
                tensorDesc({sh.b, sh.s}, DataType::kFLOAT), tensorDesc({sh.b, sh.s}, DataType::kINT32),
                tensorDesc({sh.b, sh.s}, DataType::kINT32)};
            check(runtime(plugin.get())->onShapeChange(shapes4, 4, nullptr, 4) == 0, label + ": onShapeChange");
            runEnqueue(plugin.get(), prob, declared, label);
        }
    }

    // eta = 0 keeps every live token; padding is still compacted away
    {
        Problem const prob = makeProblem(rng, 5, 24, 8, 4, 0.0F);
        Result const r = reference(prob);
        int64_t maxLive = 1;
        for (int64_t b = 0; b < prob.batch; ++b)
        {
            maxLive = std::max<int64_t>(maxLive, std::count(&prob.mask[b * 24], &prob.mask[b * 24] + 24, 1));
        }
        check(r.newLen == maxLive && r.newLen < 24, "reference: eta = 0 keeps every live token and drops the padding");
    }

    // A run that needs more workspace than the engine declared is refused; a plugin without the
    // record (an engine that lacks workspace_bytes) uses the size its shapes need.
    float const eta = 0.5F;
    int64_t const small = static_cast<int64_t>(gWorkspaceSize(2, 16));
    check(gWorkspaceSize(8, 64) > gWorkspaceSize(2, 16), "a larger problem needs more workspace");
    PluginPtr p = create({PluginField("eta", &eta, PluginFieldType::kFLOAT32, 1),
        PluginField("workspace_bytes", &small, PluginFieldType::kINT64, 1)});
    PluginPtr unrecorded = withEta(eta);
    if (!created(p, "enqueue with a declared workspace") || !created(unrecorded, "enqueue without a record"))
    {
        return;
    }
    runEnqueue(p.get(), makeProblem(rng, 8, 64, 8, 4, eta), static_cast<size_t>(small),
        "enqueue needing more than the declared workspace", true);
    runEnqueue(p.get(), makeProblem(rng, 2, 16, 8, 4, eta), static_cast<size_t>(small),
        "enqueue within the declared workspace");
    runEnqueue(unrecorded.get(), makeProblem(rng, 3, 20, 8, 2, eta), gWorkspaceSize(3, 20),
        "enqueue without a recorded workspace");
}
// Runs one section of checks and prints how many it made (`[section] NAME N`): the test asserts that every
// section ran some, instead of a total read off one run.
template <typename Section>
void section(char const* name, Section&& run)
{
    int const before = gPassed + gFailed;
    run();
    std::printf("[section] %s %d\n", name, gPassed + gFailed - before);
}
} // namespace

int main(int argc, char** argv)
{
    std::setvbuf(stdout, nullptr, _IOLBF, 0); // every FAIL line out even if a broken plugin crashes the run
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: %s <libadapler_plugins.so> <a copy of it at another path>\n", argv[0]);
        return 2;
    }
    check(registry().size() == 0, "no creator before the library is loaded");
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL); // as Triton loads plugin libraries
    if (!check(lib != nullptr, std::string("dlopen: ") + (lib == nullptr ? dlerror() : "ok")))
    {
        std::printf("%d passed, %d failed\n", gPassed, gFailed);
        return 1;
    }
    gWorkspaceSize = reinterpret_cast<WorkspaceSizeFn>(dlsym(lib, "adaplerTokenCompactWorkspaceSize"));
    check(gWorkspaceSize != nullptr, "the library exports the C API (adaplerTokenCompactWorkspaceSize)");
    section("loading", [&] { checkLoading(lib, argv[1], argv[2]); });
    if (gCreator != nullptr && gWorkspaceSize != nullptr)
    {
        section("creator", checkCreator);
        section("identity-and-clone", checkIdentityAndClone);
        section("types", checkTypes);
        section("formats", checkFormats);
        section("shapes", checkShapes);
        section("workspace", checkWorkspace);
        section("enqueue", checkEnqueue);
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
