"""The Triton models' names and tensors: one definition for the config writer, the models and the client.

No imports on purpose: the repository writer copies this file beside the ``adapler_tokenizer`` model,
which runs where ``adapler_export`` need not be installed.

``adapler_text`` (text -> prediction), per row of a [batch, 1] request:
  ``TEXT``           BYTES  UTF-8 text
  ``TEXT_PAIR``      BYTES  UTF-8 second text: an input of sentence-pair artifacts only (MRPC, RTE), required there
  ``LABEL``          BYTES  label name
  ``LABEL_ID``       INT32
  ``PROBABILITIES``  FP32 [C]
  ``TRUNCATED``      BOOL   the text was cut to the artifact's max_length wordpieces (by its truncation rule)
  ``EMPTY_INPUT``    BOOL   the text holds no token (empty, whitespace, or only characters the tokenizer
                            drops): the label is the model's prior for no evidence, not a reading
  ``RATIONALE``      BYTES  JSON {"tokens", "kept_positions", "kept_tokens"} (see runtime.Prediction)
"""

TEXT_MODEL = "adapler_text"
PLAN_MODEL = "adapler_plan"  # the single TensorRT engine (tensorrt_plan; TokenCompact plugin layers)
ONNX_MODEL = "adapler_onnx"  # the one standard-ONNX graph, onnx/model.onnx (Triton's stock onnxruntime backend)
TOKENIZER_MODEL = "adapler_tokenizer"  # TEXT -> input_ids, attention_mask: the front of both ensembles
ENSEMBLE_MODEL = "adapler_ensemble"  # adapler_tokenizer -> adapler_plan
ONNX_ENSEMBLE_MODEL = "adapler_onnx_ensemble"  # adapler_tokenizer -> adapler_onnx

TEXT_INPUT = "TEXT"
TEXT_PAIR_INPUT = "TEXT_PAIR"
TRUNCATED = "TRUNCATED"
EMPTY_INPUT = "EMPTY_INPUT"
RATIONALE = "RATIONALE"
# name -> (Triton data type, dims of one row); PROBABILITIES' -1 becomes the artifact's label count.
TEXT_OUTPUTS = {
    "LABEL": ("TYPE_STRING", [1]),
    "LABEL_ID": ("TYPE_INT32", [1]),
    "PROBABILITIES": ("TYPE_FP32", [-1]),
    TRUNCATED: ("TYPE_BOOL", [1]),
    EMPTY_INPUT: ("TYPE_BOOL", [1]),
    RATIONALE: ("TYPE_STRING", [1]),
}
# adapler_tokenizer: TEXT -> the whole-model graphs' inputs (Hugging Face's names, which the segment contract
# uses for segment 0) and the EMPTY_INPUT flag, which the ensemble passes through.
TOKENIZER_OUTPUTS = {
    "input_ids": ("TYPE_INT32", [-1]),
    "attention_mask": ("TYPE_INT32", [-1]),
    EMPTY_INPUT: ("TYPE_BOOL", [1]),
}
# ... and for a sentence-pair artifact, TEXT + TEXT_PAIR -> the token types as well (its graphs take them).
TOKEN_TYPES_OUTPUT = {"token_type_ids": ("TYPE_INT32", [-1])}


def text_inputs(text_pair: bool) -> list:
    """The BYTES inputs of ``adapler_text``, ``adapler_tokenizer`` and the ensembles: TEXT (and TEXT_PAIR)."""
    return [TEXT_INPUT, TEXT_PAIR_INPUT] if text_pair else [TEXT_INPUT]


def tokenizer_outputs(text_pair: bool) -> dict:
    """``adapler_tokenizer``'s outputs for a single-text or a sentence-pair artifact."""
    return {**TOKENIZER_OUTPUTS, **TOKEN_TYPES_OUTPUT} if text_pair else dict(TOKENIZER_OUTPUTS)
