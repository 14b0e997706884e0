"""Load an exported Diffusion Policy directory (encoder.onnx, denoiser.onnx, sampler.json) as a runnable module.

The directory is what `lerobot_sampler_export` writes; it loads as `SamplerRunnerModule`, which takes the same
observations as the LeRobot policy it came from and runs the denoising loop in ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

from tools.inputs import InputSpec
from tools.intake.types import LoadedModel, LoadOptions, ModelFormat


def load_lerobot_sampler(path: Path, options: LoadOptions) -> LoadedModel:
    """Load the exported diffusion policy in `path` with input specs from its recorded policy facts."""
    from tools.lerobot.sampler_module import SamplerRunnerModule

    path = Path(path)
    module = SamplerRunnerModule(path).eval()
    specs = list(options.input_specs) or [InputSpec.model_validate(item) for item in module.inputs]
    schedule = module.runner.schedule
    return LoadedModel(
        source=path,
        path=path,
        format=ModelFormat.LEROBOT_SAMPLER,
        options=options,
        input_specs=specs,
        module=module,
        output_names=["action"],
        config={"scheduler": schedule.kind, "num_inference_steps": schedule.num_inference_steps},
        metadata={"architecture": "LeRobot DiffusionPolicy (ONNX runner)", "policy": module.policy_facts()},
    )
