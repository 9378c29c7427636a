"""The package's public LangGraph graphs, importable from an installed package.

:func:`build_graph` is the RankGuide collaboration itself (:mod:`langchain_rankguide.graph`);
:func:`build_agent_graph` an agent workflow with RankGuide as one node
(:mod:`langchain_rankguide.graphs.agent`). The ``graphs/`` folder of the repository holds the
thin entry points that ``langgraph.json`` names for ``langgraph dev``.
"""

from langchain_rankguide.graph import RankGuideInput, RankGuideState, build_graph
from langchain_rankguide.graphs.agent import AgentInput, AgentState, build_agent_graph

__all__ = [
    "AgentInput",
    "AgentState",
    "RankGuideInput",
    "RankGuideState",
    "build_agent_graph",
    "build_graph",
]
