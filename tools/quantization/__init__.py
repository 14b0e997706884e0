"""Quantization techniques: precision casts, ONNX Runtime INT8 and 4-bit, torchao, bitsandbytes, GPTQ.

Each submodule registers its techniques in `tools.techniques.registry` when imported; optional backends
are imported inside the handlers only.
"""

from tools.quantization import bnb  # noqa: F401  (registers techniques)
from tools.quantization import casting  # noqa: F401  (registers techniques)
from tools.quantization import gptq  # noqa: F401  (registers techniques)
from tools.quantization import ort_int4  # noqa: F401  (registers techniques)
from tools.quantization import ort_int8  # noqa: F401  (registers techniques)
from tools.quantization import torch_cast  # noqa: F401  (registers techniques)
from tools.quantization import torchao_quant  # noqa: F401  (registers techniques)
