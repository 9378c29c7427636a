"""An agent workflow that uses RankGuide as one node of a larger LangGraph graph.

``triage`` sends a question it can check (a demo arithmetic problem) to ``solve`` -- a
:class:`~langchain_rankguide.chat_models.ChatRankGuide` node, SRM and LRM collaborating -- and
anything else to ``chat``, the SRM alone (:class:`ChatSteeredHuggingFace`). ``check`` verifies a
solved answer; a wrong one is solved again with every step escalated to the LRM
(``policy="lrm"``, a per-call override), at most ``max_retries`` times. Runs offline on the
embedded demo models, or on the pair of a RankGuide YAML file.

Streaming with ``stream_mode="messages"`` shows each committed reasoning step and then the
answer's tokens as they come; the per-step records ride on the final message's
``response_metadata["steps"]``.

Example:
    >>> from langchain_rankguide.graphs import build_agent_graph
    >>> graph = build_agent_graph()  # doctest: +SKIP
    >>> out = graph.invoke({"messages": [("user", "Start at 19. Add 4. What is the result?")]})
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, cast

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command

# typing_extensions' TypedDict: pydantic, which writes the graph's JSON schemas (Studio's input
# form), rejects typing's before Python 3.12.
from typing_extensions import TypedDict

from langchain_rankguide.chat_models import ChatRankGuide, ChatSteeredHuggingFace
from langchain_rankguide.demo import DemoTask
from langchain_rankguide.demo.task import parse_problem
from langchain_rankguide.graph import verify_answer


class AgentInput(TypedDict):
    """What the agent takes: a conversation (tuples, dicts or messages, as ``MessagesState``)."""

    messages: Annotated[list[AnyMessage], add_messages]


class AgentState(AgentInput, total=False):
    """The conversation, the question being solved, and retry bookkeeping."""

    question: str
    attempts: int
    policy: str | None
    verified: bool | None


def _last_question(messages: list[AnyMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    return ""


def build_agent_graph(
    config: str | Path | None = None,
    *,
    checkpointer: Any = None,
    max_retries: int = 1,
    max_tokens: int | None = None,
    **model_fields: Any,
) -> Any:
    """Build and compile the agent graph.

    Args:
        config: a RankGuide YAML file; ``None`` for the embedded demo models.
        checkpointer: a LangGraph checkpointer, or ``None`` (as ``langgraph dev`` needs).
        max_retries: re-solves of an answer the checker finds wrong.
        max_tokens: token cap of both chat models (``None``: their defaults).
        **model_fields: further fields for both chat models (e.g. ``model_kwargs``).

    Returns:
        The compiled graph; input :class:`AgentInput` (``{"messages": [...]}``), output
        :class:`AgentState`.
    """
    cfg = str(config) if config is not None else None
    rankguide = ChatRankGuide(config=cfg, max_tokens=max_tokens, **model_fields)
    chat_fields = {k: v for k, v in model_fields.items() if k != "model_kwargs"}
    srm = ChatSteeredHuggingFace.from_config(cfg, max_tokens=max_tokens, **chat_fields)
    checker = DemoTask()  # triage sends only demo questions to solve

    def triage(state: AgentState) -> Command[Literal["solve", "chat"]]:
        question = _last_question(state["messages"])
        target: Literal["solve", "chat"] = "solve" if parse_problem(question) else "chat"
        update = {"question": question, "attempts": 0, "policy": None, "verified": None}
        return Command(goto=target, update=update)

    def solve(state: AgentState) -> dict[str, Any]:
        # Only the question: a retry must not continue the rejected answer.
        reply = rankguide.invoke([HumanMessage(state["question"])], policy=state.get("policy"))
        return {"messages": [reply], "attempts": state.get("attempts", 0) + 1}

    def chat(state: AgentState) -> dict[str, Any]:
        return {"messages": [srm.invoke(state["messages"])]}

    def check(state: AgentState) -> Command[Literal["solve", "__end__"]]:
        reply = state["messages"][-1]
        answer = reply.text if isinstance(reply, AIMessage) else ""
        verified = verify_answer(state["question"], answer or None, checker)
        if verified is False and state.get("attempts", 0) <= max_retries:
            return Command(goto="solve", update={"verified": False, "policy": "lrm"})
        return Command(goto=cast(Literal["__end__"], END), update={"verified": verified})

    builder = StateGraph(AgentState, input_schema=AgentInput, output_schema=AgentState)
    builder.add_node("triage", triage)
    builder.add_node("solve", solve)
    builder.add_node("chat", chat)
    builder.add_node("check", check)
    builder.add_edge(START, "triage")
    builder.add_edge("solve", "check")
    builder.add_edge("chat", END)
    return builder.compile(checkpointer=checkpointer, name="rankguide_agent")
