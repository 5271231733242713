"""Triton Python-backend model ``adapler_tokenizer``: TEXT -> input_ids / attention_mask (INT32), EMPTY_INPUT;
for a sentence-pair artifact TEXT + TEXT_PAIR -> the same and token_type_ids (its config declares TEXT_PAIR).

Template copied to ``<repo>/adapler_tokenizer/1/model.py`` with ``tokenization.py`` and ``contract.py``
beside it and the artifact's tokenizer in ``1/tokenizer/``. It needs only ``numpy`` and ``transformers``
(no ``adapler_export``): it is the front of the ``adapler_ensemble`` (tokenizer -> ``adapler_plan``), which
runs in a Triton container that has TensorRT, where the project itself need not be installed.

Each request is encoded on its own by ``tokenization.encode`` (the library's rules: ``[CLS] … [SEP]``,
truncated to ``max_length`` by the rule ``truncation``, padded to its longest row rounded up to
``pad_to_multiple_of``; all three are config parameters, and a repository written before ``truncation``
existed cuts by ``head``, as every model then was trained): requests of
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
from tokenization import HEAD, check_truncation, decode_columns, encode, load_tokenizer  # noqa: E402


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
        self.text_pair = contract.TEXT_PAIR_INPUT in {tensor["name"] for tensor in cfg["input"]}
        self.truncation = check_truncation(params.get("truncation") or HEAD, self.text_pair)

    def _response(self, request):
        texts, *pairs = decode_columns(lambda name: pb_utils.get_input_tensor_by_name(request, name),
                                       contract.text_inputs(self.text_pair))
        enc = encode(self.tokenizer, texts, self.max_length, self.multiple, pairs[0] if pairs else None,
                     truncation=self.truncation)
        # The outputs in contract.tokenizer_outputs' order: the graph inputs (encode's model_inputs), EMPTY_INPUT.
        graph_inputs = [name for name in contract.tokenizer_outputs(self.text_pair) if name != contract.EMPTY_INPUT]
        tensors = [pb_utils.Tensor(name, array) for name, array in zip(graph_inputs, enc.model_inputs())]
        empty = pb_utils.Tensor(contract.EMPTY_INPUT, np.array([[e] for e in enc.empty], dtype=np.bool_))
        return pb_utils.InferenceResponse(output_tensors=tensors + [empty])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._response(request))
            except Exception as e:  # noqa: BLE001 - a bad request must not take the model down
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))))
        return responses
