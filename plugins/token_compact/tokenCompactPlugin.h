/*
 * tokenCompactPlugin.h -- TensorRT IPluginV3 for the AdapLeR `TokenCompact` link.
 *
 * Op "TokenCompact", namespace "adapler", version "1"; one attribute `eta` (float32, 0 < eta <= 1).
 *   inputs : hidden [B,S,H] fp32|fp16, scores [B,S] fp32, mask [B,S] int32, positions [B,S] int32
 *   outputs: hidden_out [B,S',H] (hidden's type), mask_out [B,S'] int32, positions_out [B,S'] int32,
 *            new_len: 0-D size tensor holding S' (INT64; INT32 when built with ADAPLER_SIZE_TENSOR_INT32)
 * S' is data dependent: declared with IExprBuilder::declareSizeTensor(3, opt = ceil(S/2), upper = max(S,1)).
 * The rule and the kernels are in tokenCompact.h / tokenCompactKernel.cu.
 *
 * Requires TensorRT >= 10.0 (IPluginV3 and data-dependent plugin outputs).
 */
#ifndef ADAPLER_TOKEN_COMPACT_PLUGIN_H
#define ADAPLER_TOKEN_COMPACT_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#if !defined(NV_TENSORRT_MAJOR) || NV_TENSORRT_MAJOR < 10
#error "adapler TokenCompact needs TensorRT >= 10.0 (IPluginV3 with data-dependent output shapes)"
#endif

namespace adapler
{

constexpr char const* kTOKEN_COMPACT_NAME{"TokenCompact"};
constexpr char const* kTOKEN_COMPACT_VERSION{"1"};
constexpr char const* kTOKEN_COMPACT_NAMESPACE{"adapler"};

class TokenCompactPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuild,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit TokenCompactPlugin(float eta);
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
    bool supportsFormatCombination(
        int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override;
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

    float eta() const noexcept
    {
        return mEta;
    }

private:
    void initFieldsToSerialize();

    float mEta;
    // getFieldsToSerialize() hands out pointers into these; they are rebuilt on copy.
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

#endif // ADAPLER_TOKEN_COMPACT_PLUGIN_H
