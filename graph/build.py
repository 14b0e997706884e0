"""Wire the graph: intake -> analyze -> plan -> optimize -> evaluate -> (plan | rollback | finalize).

`build_graph(checkpointer, reasoner)` compiles it with both injected; nothing is compiled or opened at import.
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph

from agents.base import Reasoner
from graph.context import GraphContext
from graph.nodes.analyze import make_analyze_node
from graph.nodes.evaluate import make_evaluate_node
from graph.nodes.finalize import finalize
from graph.nodes.intake import make_intake_node
from graph.nodes.optimize import optimize
from graph.nodes.plan import make_plan_node
from graph.nodes.rollback import rollback
from graph.routing import after_evaluate, after_intake, after_optimize, after_plan
from graph.state import JobState

NODES = ("intake", "analyze", "plan", "optimize", "evaluate", "rollback", "finalize")


def build_graph(checkpointer: BaseCheckpointSaver | None, reasoner: Reasoner) -> Any:
    """Compile the optimization graph with the given checkpointer and reasoner."""
    graph = StateGraph(JobState, context_schema=GraphContext)
    graph.add_node("intake", make_intake_node(reasoner))
    graph.add_node("analyze", make_analyze_node(reasoner))
    graph.add_node("plan", make_plan_node(reasoner))
    graph.add_node("optimize", optimize)
    graph.add_node("evaluate", make_evaluate_node(reasoner))
    graph.add_node("rollback", rollback)
    graph.add_node("finalize", finalize)
    graph.add_edge(START, "intake")
    graph.add_conditional_edges("intake", after_intake)
    graph.add_edge("analyze", "plan")
    graph.add_conditional_edges("plan", after_plan)
    graph.add_conditional_edges("optimize", after_optimize)
    graph.add_conditional_edges("evaluate", after_evaluate)
    graph.add_edge("rollback", "plan")
    graph.add_edge("finalize", END)
    return graph.compile(checkpointer=checkpointer)
