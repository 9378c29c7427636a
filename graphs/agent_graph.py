"""The agent graph for ``langgraph dev`` (``rankguide_agent`` in ``langgraph.json``).

A thin entry point: the graph lives in the package,
:func:`langchain_rankguide.graphs.build_agent_graph`. Set ``RANKGUIDE_CONFIG`` to a YAML file
for your own pair; by default the embedded demo models are used. Models load on the first run.
"""

import os

from langchain_rankguide.graphs.agent import AgentInput, AgentState, build_agent_graph

__all__ = ["AgentInput", "AgentState", "build_agent_graph", "graph"]

graph = build_agent_graph(os.environ.get("RANKGUIDE_CONFIG") or None)
