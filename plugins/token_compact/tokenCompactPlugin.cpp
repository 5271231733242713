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

// The plugin has no ILogger of its own (static registration happens before any logger exists), so
// it reports to stderr, which trtexec, Triton and Python all surface.
void logError(char const* what, char const* detail = nullptr)
{
    std::fprintf(stderr, "[adapler::TokenCompact] ERROR: %s%s%s\n", what, detail != nullptr ? ": " : "",
        detail != nullptr ? detail : "");
}

bool etaIsValid(float eta)
{
    return eta > 0.0F && eta <= 1.0F; // false for NaN
}

} // namespace

// ================================================================================ TokenCompactPlugin

TokenCompactPlugin::TokenCompactPlugin(float eta)
    : mEta(eta)
{
    initFieldsToSerialize();
}

// Delegates so that the serialisation fields point at the copy's own mEta, not the source's.
TokenCompactPlugin::TokenCompactPlugin(TokenCompactPlugin const& other)
    : TokenCompactPlugin(other.mEta)
{
}

void TokenCompactPlugin::initFieldsToSerialize()
{
    mFields.clear();
    mFields.emplace_back("eta", &mEta, PluginFieldType::kFLOAT32, 1);
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
        logError("clone failed", e.what());
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
        logError("expects 4 inputs (hidden, scores, mask, positions) and 4 outputs");
        return -1;
    }
    if (in[0].desc.dims.nbDims != 3 || in[1].desc.dims.nbDims != 2 || in[2].desc.dims.nbDims != 2
        || in[3].desc.dims.nbDims != 2)
    {
        logError("expects hidden [B,S,H] and scores/mask/positions [B,S]");
        return -1;
    }
    // The profile's largest S must be within the kernel's limit: fail the build, not the run.
    if (in[0].max.d[1] > ADAPLER_TC_MAX_SEQ_LEN)
    {
        logError("the optimization profile's max sequence length exceeds ADAPLER_TC_MAX_SEQ_LEN (8192)");
        return -1;
    }
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
    IDimensionExpr const* one = exprBuilder.constant(1);
    IDimensionExpr const* two = exprBuilder.constant(2);
    if (one == nullptr || two == nullptr)
    {
        return -1;
    }
    // upper: S' <= max(S, 1) (S' is 1 even for an empty or fully dead batch).
    // opt: what TensorRT tunes downstream layers for; AdapLeR's early links typically keep about
    // half of the tokens, so ceil(S/2) (at least 1).
    IDimensionExpr const* upper = exprBuilder.operation(DimensionOperation::kMAX, *seq, *one);
    IDimensionExpr const* half = exprBuilder.operation(DimensionOperation::kCEIL_DIV, *seq, *two);
    if (upper == nullptr || half == nullptr)
    {
        return -1;
    }
    IDimensionExpr const* opt = exprBuilder.operation(DimensionOperation::kMAX, *half, *one);
    if (opt == nullptr)
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
    if (inputs == nullptr || nbInputs != kNB_INPUTS)
    {
        return 0;
    }
    // Sized for the profile's largest [B,S]; a smaller run uses a prefix of it.
    return adaplerTokenCompactWorkspaceSize(inputs[0].max.d[0], inputs[0].max.d[1]);
}

int32_t TokenCompactPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    if (in == nullptr || nbInputs != kNB_INPUTS || in[0].dims.nbDims != 3)
    {
        return -1;
    }
    return in[0].dims.d[1] > ADAPLER_TC_MAX_SEQ_LEN ? -1 : 0;
}

int32_t TokenCompactPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        logError("enqueue called with null descriptors or buffers");
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
    size_t const wsBytes = adaplerTokenCompactWorkspaceSize(batch, seq);

    int st = adaplerTokenCompactPass1(static_cast<float const*>(inputs[1]), static_cast<int32_t const*>(inputs[2]),
        batch, seq, mEta, workspace, wsBytes, stream);
    if (st == ADAPLER_SUCCESS)
    {
        // The size tensor is written by pass 2 on the device, in the type TensorRT gave it.
        int64_t* newLen64 = outputDesc[3].type == DataType::kINT64 ? static_cast<int64_t*>(outputs[3]) : nullptr;
        int32_t* newLen32 = outputDesc[3].type == DataType::kINT32 ? static_cast<int32_t*>(outputs[3]) : nullptr;
        if (newLen64 == nullptr && newLen32 == nullptr)
        {
            logError("the size tensor output must be INT64 or INT32");
            return -1;
        }
        st = adaplerTokenCompactPass2Device(inputs[0], static_cast<int32_t const*>(inputs[3]), dtype, batch, seq,
            hiddenSize, workspace, wsBytes, outputs[0], static_cast<int32_t*>(outputs[1]),
            static_cast<int32_t*>(outputs[2]), newLen64, newLen32, stream);
    }
    if (st != ADAPLER_SUCCESS)
    {
        logError(adaplerGetErrorString(st),
            st == ADAPLER_ERR_CUDA ? cudaGetErrorString(static_cast<cudaError_t>(adaplerGetLastCudaError())) : nullptr);
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
    mFieldNames.emplace_back("eta", nullptr, PluginFieldType::kFLOAT32, 1);
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
        bool found = false;
        float eta = 0.0F;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            // Other fields (e.g. what an ONNX importer passes along) are ignored.
            if (f.name == nullptr || std::strcmp(f.name, "eta") != 0 || f.data == nullptr || f.length < 1)
            {
                continue;
            }
            if (f.type == PluginFieldType::kFLOAT32)
            {
                eta = *static_cast<float const*>(f.data);
                found = true;
            }
            else if (f.type == PluginFieldType::kFLOAT64)
            {
                eta = static_cast<float>(*static_cast<double const*>(f.data));
                found = true;
            }
        }
        if (!found)
        {
            logError("createPlugin: missing float32 field 'eta'");
            return nullptr;
        }
        if (!etaIsValid(eta))
        {
            logError("createPlugin: eta must lie in (0, 1]");
            return nullptr;
        }
        return new TokenCompactPlugin(eta);
    }
    catch (std::exception const& e)
    {
        logError("createPlugin failed", e.what());
    }
    return nullptr;
}

} // namespace adapler

// ==================================================================================== registration
//
// Static registration when the library is loaded (dlopen: Triton's `--backend-config=tensorrt,
// plugins=...`, LD_PRELOAD, trtexec --staticPlugins, ctypes.CDLL in Python).
//
// REGISTER_TENSORRT_PLUGIN(T) does exactly this with the namespace argument "" . For an
// IPluginCreatorV3One the namespace comes from the creator itself, and passing a different one to
// registerCreator() leaves it up to the registry which of the two keys the creator is found under;
// registering with "adapler" -- the creator's and the plugin's namespace -- makes the lookup
// ("TokenCompact", "1", "adapler") that engine deserialisation and the ONNX parser perform
// unambiguous. Define ADAPLER_USE_REGISTER_MACRO to use the stock macro instead.
#if defined(ADAPLER_USE_REGISTER_MACRO)
using adapler::TokenCompactPluginCreator; // the macro pastes the name into an identifier: no '::'
REGISTER_TENSORRT_PLUGIN(TokenCompactPluginCreator);
#else
namespace
{
class TokenCompactRegistrar
{
public:
    TokenCompactRegistrar()
    {
        IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(mCreator, adapler::kTOKEN_COMPACT_NAMESPACE))
        {
            adapler::logError("could not register the TokenCompact plugin creator (already registered?)");
        }
    }

private:
    adapler::TokenCompactPluginCreator mCreator;
};
TokenCompactRegistrar const gTokenCompactRegistrar{};
} // namespace
#endif
