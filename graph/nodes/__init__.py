"""One module per graph node: intake, analyze, plan, optimize, evaluate, rollback, finalize."""
