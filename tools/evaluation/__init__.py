"""Evaluation: accuracy at three levels, latency/memory/size, machine and edge targets, criteria, reports.

Measures only; the graph decides. Submodules: `types` (shared result types), `fidelity`, `task_metrics`,
`closed_loop` and `simulators/` (accuracy), `sensitivity`, `machine`, `targets`, `size`, `criteria`,
`comparison`, `report`.
"""
