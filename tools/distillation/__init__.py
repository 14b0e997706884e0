"""Distillation: `distill_module` trains a student to match a teacher; the `distill` technique recovers the
accuracy a structural change (pruning, slicing) cost, with the model before the change as the teacher.
"""

from tools.distillation.core import OutputLoss, choose_output_losses, distill_module
from tools.distillation.outputs import fidelity
from tools.distillation.report import DistillationReport, HeldOutMetrics
from tools.distillation.technique import DistillConfig

__all__ = [
    "DistillConfig",
    "DistillationReport",
    "HeldOutMetrics",
    "OutputLoss",
    "choose_output_losses",
    "distill_module",
    "fidelity",
]
