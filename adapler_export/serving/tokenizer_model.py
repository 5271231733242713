"""Triton Python-backend model ``adapler_tokenizer``: TEXT -> input_ids / attention_mask (INT32), EMPTY_INPUT.

Template copied to ``<repo>/adapler_tokenizer/1/model.py`` with ``tokenization.py`` and ``contract.py``
beside it and the artifact's tokenizer in ``1/tokenizer/``. It needs only ``numpy`` and ``transformers``
(no ``adapler_export``): it is the front of the ``adapler_ensemble`` (tokenizer -> ``adapler_plan``), which
runs in a Triton container that has TensorRT, where the project itself need not be installed.

Each request is encoded on its own by ``tokenization.encode`` (the library's rules: ``[CLS] … [SEP]``,
truncated to ``max_length``, padded to its longest row rounded up to ``pad_to_multiple_of``): requests of
equal padded length can then be joined by the plan model's dynamic batcher. Non-UTF-8 text gets a
per-request error; empty or whitespace-only text becomes ``[CLS] [SEP]`` with ``EMPTY_INPUT`` true.
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tokenization.py, contract.py

import contract  # noqa: E402
from tokenization import TextInputError, decode_texts, encode, load_tokenizer  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = params.get("tokenizer_dir") or "tokenizer"
        if not os.path.isabs(path):
            path = os.path.join(version_dir, path)
        self.tokenizer = load_tokenizer(path)
        self.max_length = int(params["max_length"])
        self.multiple = int(params.get("pad_to_multiple_of") or 1)

    def _response(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, contract.TEXT_INPUT)
        if tensor is None:
            raise TextInputError(f"missing input {contract.TEXT_INPUT}")
        enc = encode(self.tokenizer, decode_texts(tensor.as_numpy()), self.max_length, self.multiple)
        ids_name, mask_name = (name for name in contract.TOKENIZER_OUTPUTS if name != contract.EMPTY_INPUT)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(ids_name, enc.input_ids),
            pb_utils.Tensor(mask_name, enc.attention_mask),
            pb_utils.Tensor(contract.EMPTY_INPUT, np.array([[e] for e in enc.empty], dtype=np.bool_)),
        ])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._response(request))
            except Exception as e:  # noqa: BLE001 - a bad request must not take the model down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses
