"""Evaluation: accuracy at three levels, latency/memory/size, machine and edge targets, criteria, reports.

Measures only; the graph decides. Submodules: `types` (shared result types), `fidelity`, `task_metrics`,
`closed_loop` and `simulators/` (accuracy), `sensitivity`, `machine`, `targets`, `size`, `runners`
(latency and memory per runtime), `measurement` (one version's figures), `criteria`, `comparison`,
`report` and `report_plots`; `evaluate.evaluate_version` measures one stored version with all of them.
"""
