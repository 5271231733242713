"""Triton Python-backend model ``adapler_tokenizer``: TEXT -> input_ids / attention_mask (INT32).

Template copied to ``<repo>/adapler_tokenizer/1/model.py`` with the artifact's tokenizer beside it
(``1/tokenizer/``). Self-contained on purpose (``numpy`` + ``transformers`` only, no ``adapler_export``):
it is the front of the ``adapler_ensemble`` (tokenizer -> ``adapler_plan``), which runs in a Triton
container that has TensorRT, where the project itself need not be installed.

Each request is tokenized on its own (``[CLS] … [SEP]``, truncated to ``max_length``, padded to its
longest row rounded up to ``pad_to_multiple_of`` and never past ``max_length``): requests of equal
padded length can then be joined by the plan model's dynamic batcher. Non-UTF-8 text gets a
per-request error; the empty string becomes ``[CLS] [SEP]``.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_TEXT_CHARS = 1 << 20


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = params.get("tokenizer_dir") or "tokenizer"
        if not os.path.isabs(path):
            path = os.path.join(version_dir, path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = int(params.get("max_length") or 128)
        self.multiple = max(1, int(params.get("pad_to_multiple_of") or 1))
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _encode(self, texts):
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length,
                             padding=False)["input_ids"]
        longest = max(len(x) for x in ids)
        seq = min(max(longest, -(-longest // self.multiple) * self.multiple), max(self.max_length, longest))
        input_ids = np.full((len(ids), seq), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(ids), seq), dtype=np.int32)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return input_ids, mask

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, "TEXT")
                if tensor is None or tensor.as_numpy().size == 0:
                    raise ValueError("TEXT holds no element")
                texts = []
                for i, item in enumerate(tensor.as_numpy().reshape(-1)):
                    try:
                        texts.append(bytes(item).decode("utf-8")[:MAX_TEXT_CHARS])
                    except UnicodeDecodeError as e:
                        raise ValueError(f"TEXT[{i}] is not valid UTF-8: {e}") from None
                input_ids, mask = self._encode(texts)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input_ids", input_ids),
                    pb_utils.Tensor("attention_mask", mask),
                ]))
            except Exception as e:  # noqa: BLE001 - a bad request must not take the model down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses
