/*
 * tokenCompactPlugin.cpp -- TensorRT IPluginV3 + creator for adapler::TokenCompact (see the header).
 *
 * enqueue() runs the two passes of the C API back to back on TensorRT's stream: pass 2 reads S'
 * from the device (written by pass 1), writes the outputs with row stride S' and writes the size
 * tensor from the device, so enqueue never waits for the host. TensorRT allocates data-dependent
 * plugin outputs for the declared upper bound (max(S,1)), and the plugin fills the leading
 * [B,S',...] part of each, which is what TensorRT then presents as the output's shape.
 */
#include "tokenCompactPlugin.h"

#include "tokenCompact.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>

using namespace nvinfer1;

namespace adapler
{
namespace
{

// The size tensor's type. Recent TensorRT samples (sampleNonZeroPlugin, 10.x) declare size tensors
// INT64, while older header comments say INT32; build with -DADAPLER_SIZE_TENSOR_INT32 for a
// TensorRT that only accepts INT32. enqueue() handles either type, whatever was declared.
#if defined(ADAPLER_SIZE_TENSOR_INT32)
constexpr DataType kSIZE_TENSOR_TYPE = DataType::kINT32;
#else
constexpr DataType kSIZE_TENSOR_TYPE = DataType::kINT64;
#endif

constexpr int32_t kNB_INPUTS = 4;  // hidden, scores, mask, positions
constexpr int32_t kNB_OUTPUTS = 4; // hidden_out, mask_out, positions_out, new_len

constexpr char const* kFIELD_ETA = "eta";
constexpr char const* kFIELD_OPT_SEQ = "opt_seq";
constexpr char const* kFIELD_WORKSPACE = "workspace_bytes";

// ------------------------------------------------------------------------------------------ logging
// TensorRT hands a plugin library its logger through setLoggerFinder() (loadLibrary and friends). A
// library that was only dlopen()ed never gets one, so until then the messages go to stderr, which
// trtexec, Triton and Python all surface.
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};

ILogger* findLogger() noexcept
{
    ILoggerFinder* finder = gLoggerFinder.load();
    if (finder == nullptr)
    {
        return nullptr;
    }
    try
    {
        return finder->findLogger(); // not noexcept in TensorRT's interface
    }
    catch (...)
    {
        return nullptr;
    }
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void logMessage(ILogger::Severity severity, char const* format, ...) noexcept
{
    char text[512];
    int const prefix = std::snprintf(text, sizeof(text), "[adapler::TokenCompact] ");
    va_list args;
    va_start(args, format);
    std::vsnprintf(text + prefix, sizeof(text) - static_cast<size_t>(prefix), format, args);
    va_end(args);
    if (ILogger* logger = findLogger())
    {
        logger->log(severity, text);
        return;
    }
    char const* level = severity == ILogger::Severity::kWARNING ? "WARNING" : "ERROR";
    std::fprintf(stderr, "%s: %s\n", level, text);
}

#define ADAPLER_LOG_ERROR(...) ::adapler::logMessage(ILogger::Severity::kERROR, __VA_ARGS__)
#define ADAPLER_LOG_WARNING(...) ::adapler::logMessage(ILogger::Severity::kWARNING, __VA_ARGS__)

// ----------------------------------------------------------------------------------- attributes

bool etaIsValid(float eta)
{
    // [0, 1] as in docs/INTERFACES.md: eta = 0 keeps every live token (delta = 0). False for NaN.
    return eta >= 0.0F && eta <= 1.0F;
}

// One-element numeric fields, in the types an ONNX importer or our own serialization produces.
bool readFloat(PluginField const& f, float& value)
{
    if (f.type == PluginFieldType::kFLOAT32)
    {
        value = *static_cast<float const*>(f.data);
        return true;
    }
    if (f.type == PluginFieldType::kFLOAT64)
    {
        value = static_cast<float>(*static_cast<double const*>(f.data));
        return true;
    }
    return false;
}

bool readInt(PluginField const& f, int64_t& value)
{
    if (f.type == PluginFieldType::kINT32)
    {
        value = *static_cast<int32_t const*>(f.data);
        return true;
    }
    if (f.type == PluginFieldType::kINT64)
    {
        value = *static_cast<int64_t const*>(f.data);
        return true;
    }
    return false;
}

// ------------------------------------------------------------------------------------ workspace
// Workspace for a build profile: enough for the profile's largest [B, S] and so, the layout growing
// with both, for any smaller problem (getWorkspaceSize's contract). TensorRT gives every input its
// bounds (for an input behind another link, max S is that link's declared upper bound); should max S
// still be unknown (-1), the kernel's own limit bounds it. An unknown max B cannot be bounded:
// configurePlugin refuses such a profile, so the build fails there. 0: no valid bound.
size_t profileWorkspace(DynamicPluginTensorDesc const& hidden)
{
    int64_t const maxBatch = hidden.max.d[0];
    int64_t const maxSeq = hidden.max.d[1] >= 0 ? hidden.max.d[1] : ADAPLER_TC_MAX_SEQ_LEN;
    return maxBatch >= 0 ? adaplerTokenCompactWorkspaceSize(maxBatch, maxSeq) : 0;
}

} // namespace

// ================================================================================ TokenCompactPlugin

TokenCompactPlugin::TokenCompactPlugin(TokenCompactParams const& params)
    : mParams(params)
{
    initFieldsToSerialize();
}

// Delegates so that the serialization fields point at the copy's own mParams, not the source's.
TokenCompactPlugin::TokenCompactPlugin(TokenCompactPlugin const& other)
    : TokenCompactPlugin(other.mParams)
{
}

void TokenCompactPlugin::initFieldsToSerialize()
{
    mFields.clear();
    mFields.emplace_back(kFIELD_ETA, &mParams.eta, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back(kFIELD_OPT_SEQ, &mParams.optSeq, PluginFieldType::kINT32, 1);
    mFields.emplace_back(kFIELD_WORKSPACE, &mParams.workspaceBytes, PluginFieldType::kINT64, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* TokenCompactPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* TokenCompactPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<TokenCompactPlugin>(*this).release();
    }
    catch (std::exception const& e)
    {
        ADAPLER_LOG_ERROR("clone failed: %s", e.what());
    }
    return nullptr;
}

char const* TokenCompactPlugin::getPluginName() const noexcept
{
    return kTOKEN_COMPACT_NAME;
}

char const* TokenCompactPlugin::getPluginVersion() const noexcept
{
    return kTOKEN_COMPACT_VERSION;
}

char const* TokenCompactPlugin::getPluginNamespace() const noexcept
{
    return kTOKEN_COMPACT_NAMESPACE;
}

int32_t TokenCompactPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t TokenCompactPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        ADAPLER_LOG_ERROR("expects 4 inputs (hidden, scores, mask, positions) and 4 outputs");
        return -1;
    }
    if (in[0].desc.dims.nbDims != 3 || in[1].desc.dims.nbDims != 2 || in[2].desc.dims.nbDims != 2
        || in[3].desc.dims.nbDims != 2)
    {
        ADAPLER_LOG_ERROR("expects hidden [B,S,H] and scores/mask/positions [B,S]");
        return -1;
    }
    int64_t const maxBatch = in[0].max.d[0];
    int64_t const maxSeq = in[0].max.d[1];
    if (maxBatch < 0)
    {
        ADAPLER_LOG_ERROR("the optimization profile gives no upper bound for the batch size: the workspace cannot "
                          "be sized");
        return -1;
    }
    // The profile's largest S must be within the kernel's limit: fail the build, not the run.
    if (maxSeq > ADAPLER_TC_MAX_SEQ_LEN)
    {
        ADAPLER_LOG_ERROR("the optimization profile's max sequence length %lld exceeds ADAPLER_TC_MAX_SEQ_LEN (%d)",
            static_cast<long long>(maxSeq), ADAPLER_TC_MAX_SEQ_LEN);
        return -1;
    }
    if (maxSeq >= 0 && mParams.optSeq > std::max<int64_t>(maxSeq, 1))
    {
        ADAPLER_LOG_WARNING("opt_seq %d exceeds the largest S' (%lld) of this profile; set the node's opt_seq",
            mParams.optSeq, static_cast<long long>(std::max<int64_t>(maxSeq, 1)));
    }
    // Record what getWorkspaceSize() declares, so that the runtime plugin (created from the serialized
    // fields) knows what TensorRT provides. With several profiles TensorRT configures the plugin once
    // per profile: the largest declaration is kept (a run stays within its own profile, whose
    // declaration covers it).
    mParams.workspaceBytes = std::max(mParams.workspaceBytes, static_cast<int64_t>(profileWorkspace(in[0])));
    return 0;
}

bool TokenCompactPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
        || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case 0: return d.type == DataType::kFLOAT || d.type == DataType::kHALF; // hidden
    case 1: return d.type == DataType::kFLOAT;                              // scores: always fp32
    case 2:                                                                 // mask
    case 3:                                                                 // positions
    case 5:                                                                 // mask_out
    case 6: return d.type == DataType::kINT32;                              // positions_out
    case 4: return d.type == inOut[0].desc.type;                            // hidden_out: as hidden
    case 7: return d.type == kSIZE_TENSOR_TYPE;                             // new_len (size tensor)
    default: return false;
    }
}

int32_t TokenCompactPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNB_OUTPUTS || nbInputs != kNB_INPUTS)
    {
        return -1;
    }
    // The same input types supportsFormatCombination() accepts: refuse now rather than fail later.
    if ((inputTypes[0] != DataType::kFLOAT && inputTypes[0] != DataType::kHALF) || inputTypes[1] != DataType::kFLOAT
        || inputTypes[2] != DataType::kINT32 || inputTypes[3] != DataType::kINT32)
    {
        ADAPLER_LOG_ERROR("input types must be hidden fp32|fp16, scores fp32, mask int32, positions int32 (got %d, %d, "
                          "%d, %d as nvinfer1::DataType)",
            static_cast<int>(inputTypes[0]), static_cast<int>(inputTypes[1]), static_cast<int>(inputTypes[2]),
            static_cast<int>(inputTypes[3]));
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = DataType::kINT32;
    outputTypes[2] = DataType::kINT32;
    outputTypes[3] = kSIZE_TENSOR_TYPE;
    return 0;
}

int32_t TokenCompactPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS
        || inputs[0].nbDims != 3 || inputs[1].nbDims != 2 || inputs[2].nbDims != 2 || inputs[3].nbDims != 2)
    {
        return -1;
    }
    IDimensionExpr const* batch = inputs[0].d[0];
    IDimensionExpr const* seq = inputs[0].d[1];
    IDimensionExpr const* hidden = inputs[0].d[2];
    // upper: S' <= max(S, 1) (S' is 1 even for an empty or fully dead batch). It may depend on S, which
    // for every link after the first is the previous link's size tensor.
    // opt: what TensorRT tunes the downstream layers for; TensorRT requires it not to depend on a size
    // tensor, so it is the constant opt_seq, never derived from the input dims.
    IDimensionExpr const* one = exprBuilder.constant(1);
    IDimensionExpr const* opt = exprBuilder.constant(mParams.optSeq);
    if (one == nullptr || opt == nullptr)
    {
        return -1;
    }
    IDimensionExpr const* upper = exprBuilder.operation(DimensionOperation::kMAX, *seq, *one);
    if (upper == nullptr)
    {
        return -1;
    }
    IDimensionExpr const* newLen = exprBuilder.declareSizeTensor(3, *opt, *upper);
    if (newLen == nullptr)
    {
        return -1;
    }
    outputs[0].nbDims = 3; // hidden_out [B, S', H]
    outputs[0].d[0] = batch;
    outputs[0].d[1] = newLen;
    outputs[0].d[2] = hidden;
    for (int32_t k = 1; k <= 2; ++k) // mask_out, positions_out [B, S']
    {
        outputs[k].nbDims = 2;
        outputs[k].d[0] = batch;
        outputs[k].d[1] = newLen;
    }
    outputs[3].nbDims = 0; // size tensors are 0-D
    return 0;
}

size_t TokenCompactPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != kNB_INPUTS || inputs[0].max.nbDims != 3)
    {
        return 0;
    }
    return profileWorkspace(inputs[0]);
}

size_t TokenCompactPlugin::availableWorkspace(int64_t batch, int64_t seq) const noexcept
{
    // TensorRT sizes the workspace it passes to enqueue() by getWorkspaceSize(), without passing the
    // size: configurePlugin() recorded that declaration in workspaceBytes, which the engine carries in
    // the serialized fields. An engine whose fields lack it (0) gets the size its shapes need: TensorRT
    // keeps the shapes within the profile the workspace was sized for.
    return mParams.workspaceBytes > 0 ? static_cast<size_t>(mParams.workspaceBytes)
                                      : adaplerTokenCompactWorkspaceSize(batch, seq);
}

int32_t TokenCompactPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    if (in == nullptr || nbInputs != kNB_INPUTS || in[0].dims.nbDims != 3)
    {
        return -1;
    }
    int64_t const batch = in[0].dims.d[0];
    int64_t const seq = in[0].dims.d[1];
    size_t const need = adaplerTokenCompactWorkspaceSize(batch, seq); // 0: bad shape or S too long
    if (need == 0)
    {
        ADAPLER_LOG_ERROR("input shape [%lld, %lld, ...] is invalid or S exceeds %d", static_cast<long long>(batch),
            static_cast<long long>(seq), ADAPLER_TC_MAX_SEQ_LEN);
        return -1;
    }
    // Report a workspace shortfall here, before any enqueue(), too.
    if (need > availableWorkspace(batch, seq))
    {
        ADAPLER_LOG_ERROR("[B, S] = [%lld, %lld] needs %zu bytes of workspace; the engine declared %lld",
            static_cast<long long>(batch), static_cast<long long>(seq), need,
            static_cast<long long>(mParams.workspaceBytes));
        return -1;
    }
    return 0;
}

int32_t TokenCompactPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        ADAPLER_LOG_ERROR("enqueue called with null descriptors or buffers");
        return -1;
    }
    int64_t const batch = inputDesc[0].dims.d[0];
    int64_t const seq = inputDesc[0].dims.d[1];
    int64_t const hiddenSize = inputDesc[0].dims.d[2];
    int dtype = -1;
    if (inputDesc[0].type == DataType::kFLOAT)
    {
        dtype = ADAPLER_DTYPE_FLOAT32;
    }
    else if (inputDesc[0].type == DataType::kHALF)
    {
        dtype = ADAPLER_DTYPE_FLOAT16;
    }
    // The C API checks that [batch, seq] needs no more than the bytes available (else
    // ADAPLER_ERR_WORKSPACE_TOO_SMALL, before anything is launched).
    size_t const wsBytes = availableWorkspace(batch, seq);

    int st = adaplerTokenCompactPass1(static_cast<float const*>(inputs[1]), static_cast<int32_t const*>(inputs[2]),
        batch, seq, mParams.eta, workspace, wsBytes, stream);
    if (st == ADAPLER_SUCCESS)
    {
        // The size tensor is written by pass 2 on the device, in the type TensorRT gave it.
        int64_t* newLen64 = outputDesc[3].type == DataType::kINT64 ? static_cast<int64_t*>(outputs[3]) : nullptr;
        int32_t* newLen32 = outputDesc[3].type == DataType::kINT32 ? static_cast<int32_t*>(outputs[3]) : nullptr;
        if (newLen64 == nullptr && newLen32 == nullptr)
        {
            ADAPLER_LOG_ERROR("the size tensor output must be INT64 or INT32");
            return -1;
        }
        st = adaplerTokenCompactPass2Device(inputs[0], static_cast<int32_t const*>(inputs[3]), dtype, batch, seq,
            hiddenSize, workspace, wsBytes, outputs[0], static_cast<int32_t*>(outputs[1]),
            static_cast<int32_t*>(outputs[2]), newLen64, newLen32, stream);
    }
    if (st != ADAPLER_SUCCESS)
    {
        ADAPLER_LOG_ERROR("enqueue: %s%s%s", adaplerGetErrorString(st), st == ADAPLER_ERR_CUDA ? ": " : "",
            st == ADAPLER_ERR_CUDA ? cudaGetErrorString(static_cast<cudaError_t>(adaplerGetLastCudaError())) : "");
        return -1;
    }
    return 0;
}

IPluginV3* TokenCompactPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources: the workspace comes from TensorRT
}

PluginFieldCollection const* TokenCompactPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldCollection;
}

// ========================================================================= TokenCompactPluginCreator

TokenCompactPluginCreator::TokenCompactPluginCreator()
{
    // The attributes a network gives (TensorRT's ONNX parser passes the node attributes named here, in
    // these types). workspace_bytes is the plugin's own serialized state and accepted, not advertised.
    mFieldNames.emplace_back(kFIELD_ETA, nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldNames.emplace_back(kFIELD_OPT_SEQ, nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* TokenCompactPluginCreator::getPluginName() const noexcept
{
    return kTOKEN_COMPACT_NAME;
}

char const* TokenCompactPluginCreator::getPluginVersion() const noexcept
{
    return kTOKEN_COMPACT_VERSION;
}

char const* TokenCompactPluginCreator::getPluginNamespace() const noexcept
{
    return kTOKEN_COMPACT_NAMESPACE;
}

PluginFieldCollection const* TokenCompactPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* TokenCompactPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // The same fields whichever the phase: kBUILD from the network's attributes, kRUNTIME from the
        // fields getFieldsToSerialize() wrote into the engine.
        TokenCompactParams params;
        bool haveEta = false;
        bool typesOk = true;
        int64_t optSeq = params.optSeq;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            // Other fields (e.g. what an ONNX importer passes along) are ignored.
            if (f.name == nullptr || f.data == nullptr || f.length < 1)
            {
                continue;
            }
            if (std::strcmp(f.name, kFIELD_ETA) == 0)
            {
                haveEta = readFloat(f, params.eta);
                typesOk &= haveEta;
            }
            else if (std::strcmp(f.name, kFIELD_OPT_SEQ) == 0)
            {
                typesOk &= readInt(f, optSeq);
            }
            else if (std::strcmp(f.name, kFIELD_WORKSPACE) == 0)
            {
                typesOk &= readInt(f, params.workspaceBytes);
            }
        }
        if (!typesOk)
        {
            ADAPLER_LOG_ERROR("createPlugin: eta must be float32 (or float64), opt_seq and workspace_bytes int32 (or "
                              "int64)");
            return nullptr;
        }
        if (!haveEta)
        {
            ADAPLER_LOG_ERROR("createPlugin: missing float32 field 'eta'");
            return nullptr;
        }
        if (!etaIsValid(params.eta))
        {
            ADAPLER_LOG_ERROR("createPlugin: eta must lie in [0, 1], got %g", static_cast<double>(params.eta));
            return nullptr;
        }
        if (optSeq < 1 || optSeq > ADAPLER_TC_MAX_SEQ_LEN)
        {
            ADAPLER_LOG_ERROR("createPlugin: opt_seq must lie in [1, %d], got %lld", ADAPLER_TC_MAX_SEQ_LEN,
                static_cast<long long>(optSeq));
            return nullptr;
        }
        if (params.workspaceBytes < 0)
        {
            ADAPLER_LOG_ERROR("createPlugin: workspace_bytes must be >= 0");
            return nullptr;
        }
        params.optSeq = static_cast<int32_t>(optSeq);
        return new TokenCompactPlugin(params);
    }
    catch (std::exception const& e)
    {
        ADAPLER_LOG_ERROR("createPlugin failed: %s", e.what());
    }
    return nullptr;
}

} // namespace adapler

// ==================================================================================== registration
//
// Two ways in, one registration per loaded copy of the library:
//   * static: when the library is loaded (any dlopen: Triton's `--backend-config=tensorrt,plugins=...`,
//     LD_PRELOAD, trtexec --staticPlugins, ctypes.CDLL), a static object registers the creator with
//     getPluginRegistry() -- what REGISTER_TENSORRT_PLUGIN does, except for the namespace argument:
//     the macro passes "", while a V3 creator carries its own namespace, and passing that same
//     "adapler" makes the lookup ("TokenCompact", "1", "adapler") of the ONNX parser and of engine
//     deserialization unambiguous (-DADAPLER_REGISTER_EMPTY_NAMESPACE passes "" as the macro does);
//   * dynamic: IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, plugin libraries serialized with
//     an engine) dlopen()s the library -- which runs the static registration first -- then calls
//     setLoggerFinder() and registers what getCreators() returns. getCreators() therefore returns no
//     creator when the static registration succeeded: TensorRT refuses a second creator with the same
//     name, version and namespace ("creator ... exists already"), and would fail the load. When the
//     static registration did not happen (the registry refused it), the loader gets the creator.
// The library is linked with -z nodelete, so a loader that dlclose()s it (deregisterLibrary) cannot
// leave the static registration pointing into unmapped code.
namespace
{
#if defined(ADAPLER_REGISTER_EMPTY_NAMESPACE)
constexpr char const* kREGISTRATION_NAMESPACE = "";
#else
constexpr char const* kREGISTRATION_NAMESPACE = adapler::kTOKEN_COMPACT_NAMESPACE;
#endif

adapler::TokenCompactPluginCreator& theCreator()
{
    static adapler::TokenCompactPluginCreator creator; // function-local: ready whatever the static init order
    return creator;
}

std::atomic<bool> gRegisteredAtLoad{false};

class TokenCompactRegistrar
{
public:
    TokenCompactRegistrar()
    {
        IPluginRegistry* registry = getPluginRegistry();
        gRegisteredAtLoad = registry != nullptr && registry->registerCreator(theCreator(), kREGISTRATION_NAMESPACE);
        if (!gRegisteredAtLoad)
        {
            ADAPLER_LOG_WARNING("the plugin registry did not take the TokenCompact creator when the library was loaded "
                                "(already registered?); getCreators() offers it to a loader instead");
        }
    }
};
TokenCompactRegistrar const gTokenCompactRegistrar{};
} // namespace

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static IPluginCreatorInterface* const kCREATORS[] = {&theCreator()};
    nbCreators = gRegisteredAtLoad ? 0 : 1;
    return kCREATORS;
}

extern "C" void setLoggerFinder(ILoggerFinder* finder)
{
    // The first finder wins (as in NVIDIA's plugin libraries): TensorRT owns it for the process lifetime.
    ILoggerFinder* none = nullptr;
    adapler::gLoggerFinder.compare_exchange_strong(none, finder);
}
