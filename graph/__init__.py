"""The LangGraph state machine (state, nodes, routing, checkpointer, runner). Built by the orchestration issue."""
