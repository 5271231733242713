/*
 * tokenCompactPlugin.h -- TensorRT IPluginV3 for the AdapLeR `TokenCompact` link.
 *
 * Op "TokenCompact", namespace "adapler", version "1".
 *   inputs : hidden [B,S,H] fp32|fp16, scores [B,S] fp32, mask [B,S] int32, positions [B,S] int32
 *   outputs: hidden_out [B,S',H] (hidden's type), mask_out [B,S'] int32, positions_out [B,S'] int32,
 *            new_len: 0-D size tensor holding S' (INT64; INT32 when built with ADAPLER_SIZE_TENSOR_INT32)
 *   fields : eta (float32, 0 <= eta <= 1, required), opt_seq (int32, optional, default
 *            kTOKEN_COMPACT_DEFAULT_OPT_SEQ), workspace_bytes (int64, written by the plugin itself when
 *            it is serialized with an engine; see README "Workspace")
 * S' is data dependent: declared with IExprBuilder::declareSizeTensor(3, opt = opt_seq, upper = max(S,1)).
 * The rule and the kernels are in tokenCompact.h / tokenCompactKernel.cu; loading, registration and the
 * library entry points (getCreators, setLoggerFinder) are described in README.md.
 *
 * Requires TensorRT >= 10.0 (IPluginV3 and data-dependent plugin outputs).
 */
#ifndef ADAPLER_TOKEN_COMPACT_PLUGIN_H
#define ADAPLER_TOKEN_COMPACT_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "adapler TokenCompact needs TensorRT >= 10.0 (IPluginV3 with data-dependent output shapes)"
#endif

// The plugin-library entry points must be visible whatever the visibility the library is built with.
#if defined(_WIN32)
#define ADAPLER_PLUGIN_API __declspec(dllexport)
#else
#define ADAPLER_PLUGIN_API __attribute__((visibility("default")))
#endif

namespace adapler
{

constexpr char const* kTOKEN_COMPACT_NAME{"TokenCompact"};
constexpr char const* kTOKEN_COMPACT_VERSION{"1"};
constexpr char const* kTOKEN_COMPACT_NAMESPACE{"adapler"};

// The value TensorRT auto-tunes the layers after the link for (declareSizeTensor's `opt`) when the node
// has no `opt_seq`: half of the project's default max_length (64), the order of what an AdapLeR link
// keeps. It must be a constant: for every link after the first, S is itself a size tensor, and
// TensorRT requires `opt` not to depend on one.
constexpr int32_t kTOKEN_COMPACT_DEFAULT_OPT_SEQ{32};

// Everything a plugin instance carries; all of it is serialized with the engine.
struct TokenCompactParams
{
    float eta{};                                     // keep threshold factor, in [0, 1]
    int32_t optSeq{kTOKEN_COMPACT_DEFAULT_OPT_SEQ};  // auto-tuning value of S', in [1, ADAPLER_TC_MAX_SEQ_LEN]
    int64_t workspaceBytes{0};                       // workspace the build declared; 0 = not known
};

class TokenCompactPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit TokenCompactPlugin(TokenCompactParams const& params);
    TokenCompactPlugin(TokenCompactPlugin const& other);
    TokenCompactPlugin& operator=(TokenCompactPlugin const&) = delete;
    ~TokenCompactPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    TokenCompactParams const& params() const noexcept
    {
        return mParams;
    }

private:
    void initFieldsToSerialize();
    // Workspace bytes enqueue() may use for a [batch, seq] problem: what the build declared, or, for an
    // engine that did not record it, what the problem needs. 0: invalid shape.
    size_t availableWorkspace(int64_t batch, int64_t seq) const noexcept;

    TokenCompactParams mParams;
    // getFieldsToSerialize() hands out pointers into mParams; they are rebuilt on copy.
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class TokenCompactPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    TokenCompactPluginCreator();
    ~TokenCompactPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace adapler

// TensorRT's plugin-library entry points (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, plugin
// libraries serialized with an engine). The names and signatures are TensorRT's convention; the
// public headers do not declare them. The deprecated getPluginCreators() is for IPluginV2 creators and
// is not provided.
extern "C"
{
    // The creators for the loader to register: none when this copy of the library already registered
    // its creator when it was loaded (static registration), so that it is never registered twice.
    ADAPLER_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
    // Where the plugin's messages go: the finder's ILogger (stderr until a finder is set).
    ADAPLER_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
}

#endif // ADAPLER_TOKEN_COMPACT_PLUGIN_H
