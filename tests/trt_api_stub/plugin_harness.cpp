/*
 * plugin_harness.cpp -- drives the TokenCompact TensorRT plugin the way TensorRT would, on a CPU.
 *
 * Built by tests/test_plugin_build.py into a shared library together with
 *   - tokenCompactPlugin.cpp (the real plugin source), against the API stub in this folder, and
 *   - tokenCompactKernel.cu compiled as host C++ with tools/host_emu (the real kernels, emulated),
 * and called from Python with ctypes. It supplies what TensorRT would: the plugin registry (records
 * the static registration), an expression builder (evaluates the shapes the plugin declares), the
 * tensor descriptors and buffers of enqueue(). Not TensorRT: it checks the plugin's own logic
 * (fields, formats, types, shapes, size tensor, workspace, enqueue's wiring to the kernels), not its
 * behaviour inside a real engine.
 */
#include "NvInferRuntime.h"
#include "tokenCompact.h"
#include "tokenCompactPlugin.h"

#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

#if defined(ADAPLER_SIZE_TENSOR_INT32)
#define ADAPLER_HARNESS_SIZE_TYPE DataType::kINT32
#else
#define ADAPLER_HARNESS_SIZE_TYPE DataType::kINT64
#endif

// ------------------------------------------------------------------------- plugin registry
namespace
{
struct Registration
{
    IPluginCreatorInterface* creator;
    std::string ns;
};

class FakeRegistry : public IPluginRegistry
{
public:
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        registrations.push_back({&creator, pluginNamespace != nullptr ? pluginNamespace : "<null>"});
        return true;
    }
    std::vector<Registration> registrations;
};

FakeRegistry& registry()
{
    static FakeRegistry r; // function-local: ready whatever the order of static initialisation
    return r;
}
} // namespace

extern "C" IPluginRegistry* getPluginRegistry() noexcept
{
    return &registry();
}

// ---------------------------------------------------------------- dimension expressions
namespace
{
using Env = std::map<std::string, int64_t>;

struct Expr : IDimensionExpr
{
    std::function<int64_t(Env const&)> eval;
    bool constant = false;
    int64_t value = 0;
    bool size = false;
    ~Expr() noexcept override = default;
};

struct Builder : IExprBuilder
{
    std::vector<std::unique_ptr<Expr>> pool;
    int32_t sizeIndex = -1;
    Expr const* opt = nullptr;
    Expr const* upper = nullptr;
    int declareCalls = 0;

    Expr* make()
    {
        pool.push_back(std::make_unique<Expr>());
        return pool.back().get();
    }
    Expr const* var(std::string const& name)
    {
        Expr* e = make();
        e->eval = [name](Env const& env) { return env.at(name); };
        return e;
    }
    ~Builder() noexcept override = default;
};

Builder& asBuilder(IExprBuilder* b)
{
    return *static_cast<Builder*>(b);
}

int64_t evalAt(IDimensionExpr const* e, Env const& env)
{
    return static_cast<Expr const*>(e)->eval(env);
}
} // namespace

bool IDimensionExpr::isConstant() const noexcept
{
    return static_cast<Expr const*>(this)->constant;
}
int64_t IDimensionExpr::getConstantValue() const noexcept
{
    return static_cast<Expr const*>(this)->value;
}
bool IDimensionExpr::isSizeTensor() const noexcept
{
    return static_cast<Expr const*>(this)->size;
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
    auto const* a = static_cast<Expr const*>(&first);
    auto const* b = static_cast<Expr const*>(&second);
    Expr* e = asBuilder(this).make();
    e->eval = [op, a, b](Env const& env) -> int64_t {
        int64_t const x = a->eval(env);
        int64_t const y = b->eval(env);
        switch (op)
        {
        case DimensionOperation::kSUM: return x + y;
        case DimensionOperation::kPROD: return x * y;
        case DimensionOperation::kMAX: return x > y ? x : y;
        case DimensionOperation::kMIN: return x < y ? x : y;
        case DimensionOperation::kSUB: return x - y;
        case DimensionOperation::kEQUAL: return x == y;
        case DimensionOperation::kLESS: return x < y;
        case DimensionOperation::kFLOOR_DIV: return x >= 0 ? x / y : -((-x + y - 1) / y);
        case DimensionOperation::kCEIL_DIV: return (x + y - 1) / y;
        }
        return -999;
    };
    return e;
}

IDimensionExpr const* IExprBuilder::declareSizeTensor(int32_t outputIndex, IDimensionExpr const& opt, IDimensionExpr const& upper)
{
    Builder& b = asBuilder(this);
    b.declareCalls++;
    b.sizeIndex = outputIndex;
    b.opt = static_cast<Expr const*>(&opt);
    b.upper = static_cast<Expr const*>(&upper);
    Expr* e = b.make();
    e->size = true;
    e->eval = [](Env const& env) { return env.at("S'"); };
    return e;
}

// ------------------------------------------------------------------------------- checks
namespace
{
int gFailures = 0;

void expect(bool ok, std::string const& what)
{
    if (!ok)
    {
        ++gFailures;
        std::fprintf(stderr, "plugin_harness FAIL: %s\n", what.c_str());
    }
}

IPluginCreatorV3One* creator()
{
    for (auto const& r : registry().registrations)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(r.creator);
        if (std::strcmp(c->getPluginName(), "TokenCompact") == 0)
        {
            return c;
        }
    }
    return nullptr;
}

std::unique_ptr<IPluginV3> makePlugin(float eta)
{
    PluginField f("eta", &eta, PluginFieldType::kFLOAT32, 1);
    PluginFieldCollection fc{1, &f};
    return std::unique_ptr<IPluginV3>(creator()->createPlugin("link", &fc, TensorRTPhase::kBUILD));
}

template <typename T>
T* cap(IPluginV3* p, PluginCapabilityType t)
{
    return static_cast<T*>(p->getCapabilityInterface(t));
}

DynamicPluginTensorDesc dyn(int nb, std::vector<int64_t> const& maxDims, DataType type)
{
    DynamicPluginTensorDesc d{};
    d.desc.dims.nbDims = nb;
    d.desc.type = type;
    d.desc.format = TensorFormat::kLINEAR;
    d.max.nbDims = nb;
    d.min.nbDims = nb;
    d.opt.nbDims = nb;
    for (int i = 0; i < nb; ++i)
    {
        d.desc.dims.d[i] = -1;
        d.max.d[i] = maxDims[i];
        d.min.d[i] = 1;
        d.opt.d[i] = maxDims[i];
    }
    return d;
}

PluginTensorDesc desc(std::vector<int64_t> const& dims, DataType type)
{
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.dims.d[i] = dims[i];
    }
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    d.scale = -1.0F;
    return d;
}
} // namespace

extern "C" int harnessSelfCheck(void)
{
    gFailures = 0;
    // static registration: one creator, namespace "adapler"
    auto const& regs = registry().registrations;
    expect(regs.size() == 1, "exactly one creator registered when the library loads");
    expect(!regs.empty() && regs[0].ns == "adapler", "registered under the namespace \"adapler\"");
    IPluginCreatorV3One* c = creator();
    expect(c != nullptr, "creator TokenCompact found");
    if (c == nullptr)
    {
        return gFailures;
    }
    expect(std::strcmp(c->getPluginVersion(), "1") == 0 && std::strcmp(c->getPluginNamespace(), "adapler") == 0,
        "creator version 1, namespace adapler");
    PluginFieldCollection const* names = c->getFieldNames();
    expect(names != nullptr && names->nbFields == 1 && std::strcmp(names->fields[0].name, "eta") == 0
            && names->fields[0].type == PluginFieldType::kFLOAT32,
        "one field: eta, float32");

    // createPlugin: eta parsing and validation
    expect(makePlugin(0.5F) != nullptr, "eta = 0.5 accepted");
    expect(makePlugin(1.0F) != nullptr, "eta = 1 accepted");
    expect(makePlugin(0.0F) == nullptr, "eta = 0 rejected");
    expect(makePlugin(1.5F) == nullptr, "eta = 1.5 rejected");
    {
        PluginFieldCollection empty{0, nullptr};
        expect(std::unique_ptr<IPluginV3>(c->createPlugin("x", &empty, TensorRTPhase::kBUILD)) == nullptr,
            "missing eta rejected");
        double etaD = 0.25;
        char const ns[] = "adapler";
        PluginField fs[2] = {PluginField("plugin_namespace", ns, PluginFieldType::kCHAR, 7),
            PluginField("eta", &etaD, PluginFieldType::kFLOAT64, 1)};
        PluginFieldCollection fc{2, fs};
        std::unique_ptr<IPluginV3> p(c->createPlugin("x", &fc, TensorRTPhase::kRUNTIME));
        expect(p != nullptr, "float64 eta and an unknown extra field accepted");
        if (p)
        {
            auto* rt = cap<IPluginV3OneRuntime>(p.get(), PluginCapabilityType::kRUNTIME);
            PluginFieldCollection const* ser = rt->getFieldsToSerialize();
            expect(ser->nbFields == 1 && *static_cast<float const*>(ser->fields[0].data) == 0.25F,
                "serialized eta is the float32 value");
        }
    }

    std::unique_ptr<IPluginV3> plugin = makePlugin(0.375F);
    if (!plugin)
    {
        return gFailures + 1;
    }
    auto* core = cap<IPluginV3OneCore>(plugin.get(), PluginCapabilityType::kCORE);
    auto* build = cap<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    auto* runtime = cap<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME);
    expect(core && build && runtime, "all three capability interfaces");
    expect(std::strcmp(core->getPluginName(), "TokenCompact") == 0 && std::strcmp(core->getPluginVersion(), "1") == 0
            && std::strcmp(core->getPluginNamespace(), "adapler") == 0,
        "plugin name/version/namespace match the creator");

    // clone / attachToContext keep eta, in the clone's own storage
    {
        std::unique_ptr<IPluginV3> cl(plugin->clone());
        std::unique_ptr<IPluginV3> att(runtime->attachToContext(nullptr));
        for (IPluginV3* p : {cl.get(), att.get()})
        {
            auto* rt = cap<IPluginV3OneRuntime>(p, PluginCapabilityType::kRUNTIME);
            PluginFieldCollection const* ser = rt->getFieldsToSerialize();
            PluginFieldCollection const* orig = runtime->getFieldsToSerialize();
            expect(ser->nbFields == 1 && *static_cast<float const*>(ser->fields[0].data) == 0.375F
                    && ser->fields[0].data != orig->fields[0].data,
                "clone serializes its own copy of eta");
        }
    }

    // output count and types
    expect(build->getNbOutputs() == 4, "4 outputs");
    for (DataType h : {DataType::kFLOAT, DataType::kHALF})
    {
        DataType in[4] = {h, DataType::kFLOAT, DataType::kINT32, DataType::kINT32};
        DataType out[4];
        expect(build->getOutputDataTypes(out, 4, in, 4) == 0 && out[0] == h && out[1] == DataType::kINT32
                && out[2] == DataType::kINT32 && out[3] == ADAPLER_HARNESS_SIZE_TYPE,
            "output types: hidden's, int32, int32, size tensor");
    }

    // format combinations
    {
        DynamicPluginTensorDesc io[8];
        DataType const want[8] = {DataType::kHALF, DataType::kFLOAT, DataType::kINT32, DataType::kINT32, DataType::kHALF,
            DataType::kINT32, DataType::kINT32, ADAPLER_HARNESS_SIZE_TYPE};
        for (int i = 0; i < 8; ++i)
        {
            io[i] = dyn(2, {4, 16}, want[i]);
        }
        for (int pos = 0; pos < 8; ++pos)
        {
            expect(build->supportsFormatCombination(pos, io, 4, 4), "accepted combination at pos " + std::to_string(pos));
            DynamicPluginTensorDesc saved = io[pos];
            io[pos].desc.format = TensorFormat::kCHW2;
            expect(!build->supportsFormatCombination(pos, io, 4, 4), "non-linear format rejected at pos " + std::to_string(pos));
            io[pos] = saved;
        }
        io[0].desc.type = DataType::kFLOAT;
        expect(build->supportsFormatCombination(0, io, 4, 4), "fp32 hidden accepted");
        expect(!build->supportsFormatCombination(4, io, 4, 4), "hidden_out must follow hidden's type");
        io[0].desc.type = DataType::kBF16;
        expect(!build->supportsFormatCombination(0, io, 4, 4), "bf16 hidden rejected");
        io[1].desc.type = DataType::kHALF;
        expect(!build->supportsFormatCombination(1, io, 4, 4), "fp16 scores rejected");
        io[2].desc.type = DataType::kINT64;
        expect(!build->supportsFormatCombination(2, io, 4, 4), "int64 mask rejected");
    }

    // shapes: [B,S,H] -> [B,S',H], [B,S'], [B,S'], 0-D; S' declared with opt/upper from S
    {
        Builder eb;
        DimsExprs in[4];
        in[0].nbDims = 3;
        in[0].d[0] = eb.var("B");
        in[0].d[1] = eb.var("S");
        in[0].d[2] = eb.constant(768);
        for (int k = 1; k < 4; ++k)
        {
            in[k].nbDims = 2;
            in[k].d[0] = in[0].d[0];
            in[k].d[1] = in[0].d[1];
        }
        DimsExprs out[4];
        int const rc = build->getOutputShapes(in, 4, nullptr, 0, out, 4, eb);
        expect(rc == 0, "getOutputShapes succeeds");
        expect(eb.declareCalls == 1 && eb.sizeIndex == 3, "one size tensor, output 3");
        if (rc == 0 && eb.opt != nullptr && eb.upper != nullptr)
        {
            for (int64_t s : {0, 1, 2, 17, 512})
            {
                Env env{{"B", 3}, {"S", s}, {"S'", 7}};
                expect(eb.upper->eval(env) == (s > 1 ? s : 1), "upper = max(S,1) at S=" + std::to_string(s));
                int64_t const half = (s + 1) / 2;
                expect(eb.opt->eval(env) == (half > 1 ? half : 1), "opt = max(ceil(S/2),1) at S=" + std::to_string(s));
            }
            Env env{{"B", 3}, {"S", 40}, {"S'", 7}};
            expect(out[0].nbDims == 3 && evalAt(out[0].d[0], env) == 3 && evalAt(out[0].d[1], env) == 7
                    && evalAt(out[0].d[2], env) == 768,
                "hidden_out is [B, S', H]");
            for (int k = 1; k <= 2; ++k)
            {
                expect(out[k].nbDims == 2 && evalAt(out[k].d[0], env) == 3 && evalAt(out[k].d[1], env) == 7,
                    "mask_out/positions_out are [B, S']");
            }
            expect(out[3].nbDims == 0, "the size tensor is 0-D");
        }
        in[1].nbDims = 3;
        expect(build->getOutputShapes(in, 4, nullptr, 0, out, 4, eb) != 0, "a 3-D scores input is rejected");
    }

    // configurePlugin / onShapeChange enforce the sequence limit; workspace follows the profile max
    {
        DynamicPluginTensorDesc in[4] = {dyn(3, {8, 512, 768}, DataType::kHALF), dyn(2, {8, 512}, DataType::kFLOAT),
            dyn(2, {8, 512}, DataType::kINT32), dyn(2, {8, 512}, DataType::kINT32)};
        DynamicPluginTensorDesc out[4] = {dyn(3, {8, 512, 768}, DataType::kHALF), dyn(2, {8, 512}, DataType::kINT32),
            dyn(2, {8, 512}, DataType::kINT32), dyn(0, {}, ADAPLER_HARNESS_SIZE_TYPE)};
        expect(build->configurePlugin(in, 4, out, 4) == 0, "configurePlugin accepts S <= 8192");
        expect(build->getWorkspaceSize(in, 4, out, 4) == adaplerTokenCompactWorkspaceSize(8, 512),
            "workspace for the profile's max [B,S]");
        in[0].max.d[1] = 9000;
        expect(build->configurePlugin(in, 4, out, 4) != 0, "configurePlugin rejects a profile with S > 8192");
        PluginTensorDesc rin[4] = {desc({2, 9000, 4}, DataType::kHALF), desc({2, 9000}, DataType::kFLOAT),
            desc({2, 9000}, DataType::kINT32), desc({2, 9000}, DataType::kINT32)};
        expect(runtime->onShapeChange(rin, 4, nullptr, 4) != 0, "onShapeChange rejects S > 8192");
        rin[0].dims.d[1] = 64;
        expect(runtime->onShapeChange(rin, 4, nullptr, 4) == 0, "onShapeChange accepts S = 64");
    }
    return gFailures;
}

// enqueue() as TensorRT calls it, on host buffers (the kernels run under host emulation). The
// output buffers must be sized for the upper bound; sizeOut receives the size tensor (int64, or
// int32 in its low 4 bytes with ADAPLER_SIZE_TENSOR_INT32).
extern "C" int harnessEnqueue(int hiddenIsHalf, int64_t batch, int64_t seq, int64_t hidden, float eta,
    void const* hiddenIn, void const* scores, void const* mask, void const* positions, void* hiddenOut, void* maskOut,
    void* positionsOut, void* sizeOut, void* workspace)
{
    std::unique_ptr<IPluginV3> plugin = makePlugin(eta);
    if (!plugin)
    {
        return -100;
    }
    auto* runtime = cap<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME);
    DataType const h = hiddenIsHalf ? DataType::kHALF : DataType::kFLOAT;
    PluginTensorDesc in[4] = {desc({batch, seq, hidden}, h), desc({batch, seq}, DataType::kFLOAT),
        desc({batch, seq}, DataType::kINT32), desc({batch, seq}, DataType::kINT32)};
    // TensorRT describes data-dependent outputs with their runtime extent; the plugin must not rely on it
    PluginTensorDesc out[4] = {desc({batch, -1, hidden}, h), desc({batch, -1}, DataType::kINT32),
        desc({batch, -1}, DataType::kINT32), desc({}, ADAPLER_HARNESS_SIZE_TYPE)};
    if (runtime->onShapeChange(in, 4, out, 4) != 0)
    {
        return -101;
    }
    void const* inputs[4] = {hiddenIn, scores, mask, positions};
    void* outputs[4] = {hiddenOut, maskOut, positionsOut, sizeOut};
    return runtime->enqueue(in, out, inputs, outputs, workspace, nullptr);
}

extern "C" size_t harnessWorkspaceSize(int64_t batch, int64_t seq)
{
    return adaplerTokenCompactWorkspaceSize(batch, seq);
}
