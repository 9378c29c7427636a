#!/usr/bin/env python
"""Run docs/langchain.md's agent loop on the demo pair for several tools, questions and authors.

Each row: the tool, the question, ``steps.final_answer_by``, the call the agent made, the tool's
result and the final answer, and whether both are right. Greedy decoding: the table is the
same on every run.

    python scripts/demo_tool_agent.py
"""

from __future__ import annotations

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool

from langchain_rankguide.chat_models import ChatRankGuide


@tool
def get_price(input: int) -> int:
    """Get the price."""
    return input * 2


@tool
def double(n: int) -> int:
    """Double the number."""
    return n * 2


CASES = [
    (get_price, "Call get_price with input 42.", {"input": 42}),
    (get_price, "What does get_price give for 42?", {"input": 42}),
    (get_price, "Use get_price on 7.", {"input": 7}),
    (get_price, "What is the value of get_price(42)? Use the tool.", {"input": 42}),
    (double, "Call double with n 21.", {"n": 21}),
    (double, "What does double give for 21?", {"n": 21}),
]


def agent_for(chosen: object, final_answer_by: str) -> object:
    name = chosen.name  # type: ignore[attr-defined]

    @wrap_model_call
    def call_then_answer(request, handler):  # type: ignore[no-untyped-def]
        called = any(isinstance(m, ToolMessage) for m in request.messages)
        return handler(request.override(tool_choice="none" if called else name))

    model = ChatRankGuide(model_kwargs={"steps": {"final_answer_by": final_answer_by}})
    return create_agent(model, tools=[chosen], middleware=[call_then_answer])


def main() -> None:
    print("| tool | question | final_answer_by | call | result | answer | right |")
    print("|---|---|---|---|---|---|---|")
    for chosen, question, expected in CASES:
        for author in ("router", "lrm"):
            messages = agent_for(chosen, author).invoke(  # type: ignore[attr-defined]
                {"messages": [("user", question)]}
            )["messages"]
            call = messages[1].tool_calls[0]["args"] if messages[1].tool_calls else None
            result = messages[2].content if len(messages) > 3 else None
            answer = messages[-1].content
            right = call == expected and answer == str(chosen.invoke(expected))
            print(
                f"| {chosen.name} | {question} | {author} | {call} | {result} | {answer!r} | "
                f"{'yes' if right else 'no'} |"
            )


if __name__ == "__main__":
    main()
