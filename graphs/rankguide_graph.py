"""The RankGuide graph for ``langgraph dev``: built from YAML, compiled without a checkpointer.

Set ``RANKGUIDE_CONFIG`` to a YAML file to serve your own model pair; by default the embedded
demo models are used. Models load on the first run, not at import.
"""

import os

from langchain_rankguide.config import load_config
from langchain_rankguide.graph import build_graph

graph = build_graph(load_config(os.environ.get("RANKGUIDE_CONFIG") or None))
