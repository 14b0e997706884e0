"""Technique library contract: typed configs, one registry, and `apply(store, job, version, config)`.

The families live in `tools.quantization`, `tools.pruning`, `tools.distillation`,
`tools.architecture_search` and `tools.compression`; each registers its techniques here at import. Model-family
adapters above them (`tools.lerobot.techniques`) register their own techniques the same way, after the families.
"""

from tools.techniques.apply import AppliedTechnique, apply, seed_everything
from tools.techniques.artifacts import (
    OutputAgreement,
    load_manifest,
    load_version,
    output_agreement,
    run_outputs,
    save_onnx_model,
    save_torch_module,
    store_original,
    torch_load_options,
)
from tools.techniques.base import (
    CalibrationData,
    Family,
    Needs,
    ProgressCallback,
    TechniqueConfig,
    TechniqueContext,
    TechniqueProduct,
    TechniqueSpec,
    calibration_from_data,
    synthetic_calibration,
)
from tools.techniques.registry import (
    TechniqueEntry,
    TechniqueInfo,
    get_technique,
    list_techniques,
    measured_effects,
    parse_config,
    register,
    techniques,
    unavailable_reason,
)

__all__ = [
    "AppliedTechnique",
    "CalibrationData",
    "Family",
    "Needs",
    "OutputAgreement",
    "ProgressCallback",
    "TechniqueConfig",
    "TechniqueContext",
    "TechniqueEntry",
    "TechniqueInfo",
    "TechniqueProduct",
    "TechniqueSpec",
    "apply",
    "calibration_from_data",
    "get_technique",
    "list_techniques",
    "load_manifest",
    "load_version",
    "measured_effects",
    "output_agreement",
    "parse_config",
    "register",
    "run_outputs",
    "save_onnx_model",
    "save_torch_module",
    "seed_everything",
    "store_original",
    "synthetic_calibration",
    "techniques",
    "torch_load_options",
    "unavailable_reason",
]
