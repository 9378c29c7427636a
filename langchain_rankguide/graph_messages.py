"""The collaboration graph as a chat graph: a conversation in, the answer as an ``AIMessage`` out.

The graph's ``messages`` channel works as in LangGraph's ``MessagesState`` (``add_messages``:
``(role, text)`` tuples, dicts and message objects are accepted). A run given a conversation
answers its last user message and appends its reply (a run given a ``question`` or ``prompt``
leaves ``messages`` alone, so its state stays JSON-native), shaped as
:class:`~langchain_rankguide.chat_models.ChatRankGuide` shapes its replies: the answer as
``content``, the routed reasoning as ``additional_kwargs["reasoning_content"]``, the step records,
finish and stop reasons and per-model usage in ``response_metadata``, token counts in
``usage_metadata``.

``stream_mode="messages"`` shows a run as a chat model's stream. LangGraph builds that stream
from chat-model callbacks (its ``StreamMessagesHandler`` listens to ``on_chat_model_start``,
``on_llm_new_token`` and ``on_llm_end``), and this graph has no chat model: so each committed
step opens such a callback run on the node's own callback manager, the way a chat model called
in the node would, and sends the step's tokens through it; ``finish`` closes the reply with a
chunk that carries the metadata. Every chunk carries the reply's id, so the chunks add up to
the reply that lands in the state, which the stream then does not repeat. A run with no
callback handlers (the run stream, ``values``/``custom`` streaming) skips all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_callback_manager_for_config

from langchain_rankguide.engine.text import token_pieces
from langchain_rankguide.schemas import Usage, chat_finish_reason, usage_by_role

PROVIDER = "rankguide"
"""``model_provider`` of the graph's replies (as of :class:`ChatRankGuide`'s)."""


def collaboration_name(config: Any) -> str:
    """``rankguide:<srm>+<lrm>``: the model name of a configuration's collaboration."""
    return f"rankguide:{config.srm.model}+{config.lrm.model}"


def needs_answer(messages: Sequence[AnyMessage]) -> bool:
    """``True`` when a conversation waits for a reply: it is not empty and does not end in one.

    A checkpointed thread keeps its messages: after a run the last one is its reply, so the
    next run answers a new user message if one was added, else the ``question`` input.
    """
    return bool(messages) and not isinstance(messages[-1], AIMessage)


def last_user_text(messages: Sequence[BaseMessage]) -> str:
    """The text of the last user message (``""`` when there is none)."""
    return next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")


def conversation_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """A conversation as the role/content dicts chat templates read (text content)."""
    return [dict(m) for m in convert_to_openai_messages(list(messages), text_format="string")]


def public_steps(steps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Step records as replies show them: without their token ids."""
    return [{k: v for k, v in s.items() if k != "token_ids"} for s in steps]


def reply_usage(prompt_tokens: int, steps: Sequence[Mapping[str, Any]]) -> UsageMetadata:
    """LangChain usage of a reply: the SRM prompt in, the committed steps out.

    ``output_token_details["reasoning"]`` counts the steps before the answer.
    """
    output = sum(int(s.get("tokens", 0)) for s in steps)
    reasoning = sum(int(s.get("tokens", 0)) for s in steps if not s.get("is_answer"))
    return UsageMetadata(
        input_tokens=prompt_tokens,
        output_tokens=output,
        total_tokens=prompt_tokens + output,
        output_token_details={"reasoning": reasoning},
    )


def reply_metadata(
    *,
    model_name: str,
    stop_reason: str | None,
    steps: Sequence[Mapping[str, Any]],
    answer_author: str | None,
    correct: bool | None,
    usage: Mapping[str, Usage] | None,
) -> dict[str, Any]:
    """``response_metadata`` of a reply: names, finish and stop reasons, steps, usage."""
    return {
        "model_name": model_name,
        "model_provider": PROVIDER,
        "finish_reason": chat_finish_reason(stop_reason, steps),
        "stop_reason": stop_reason,
        "steps": public_steps(steps),
        "answer_author": answer_author,
        "correct": correct,
        "usage_by_model": usage_by_role(usage),
    }


def build_reply(
    reply_id: str,
    answer: str | None,
    steps: Sequence[Mapping[str, Any]],
    metadata: dict[str, Any],
    usage: UsageMetadata,
) -> AIMessage:
    """The reply a run appends to ``messages``."""
    reasoning = "".join(str(s.get("text", "")) for s in steps if not s.get("is_answer"))
    return AIMessage(
        content=answer or "",
        additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
        response_metadata=metadata,
        usage_metadata=usage,
        id=reply_id,
    )


class MessagesStream:
    """Sends a run's reply to LangGraph's ``messages`` stream, step by step (see the module).

    Args:
        model_name: the collaboration's model name (``ls_model_name`` of the callback runs).
    """

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    @staticmethod
    def active(config: RunnableConfig) -> bool:
        """Whether a node's run has callback handlers to send to (none: nothing is built)."""
        return bool(get_callback_manager_for_config(config).handlers)

    def step(
        self,
        config: RunnableConfig,
        prompt: Sequence[Mapping[str, Any]],
        reply_id: str,
        text: str,
        *,
        is_answer: bool,
        tokenizer: Any,
    ) -> None:
        """Stream a committed step, one chunk per token: reasoning, or the answer's content.

        Args:
            config: the node's config (its callbacks carry LangGraph's stream handler).
            prompt: the run's chat messages (what the callback run reports as its input).
            reply_id: the id of the run's reply.
            text: the step's text (for the answer step: the answer, without its marker).
            is_answer: whether ``text`` is the answer (content) or reasoning.
            tokenizer: the step author's tokenizer (``None``: one chunk).
        """
        run = self._open(config, prompt)
        if run is None:
            return
        chunks = [_chunk(reply_id, piece, is_answer) for piece in token_pieces(tokenizer, text)]
        self._send(run, chunks, reply_id)

    def close(
        self, config: RunnableConfig, prompt: Sequence[Mapping[str, Any]], reply: AIMessage
    ) -> None:
        """End the reply's stream: one last chunk with its metadata and usage."""
        run = self._open(config, prompt)
        if run is None:
            return
        last = AIMessageChunk(
            content="",
            response_metadata=dict(reply.response_metadata),
            usage_metadata=reply.usage_metadata,
            id=reply.id,
            chunk_position="last",
        )
        self._send(run, [last], str(reply.id))

    def _open(
        self, config: RunnableConfig, prompt: Sequence[Mapping[str, Any]]
    ) -> CallbackManagerForLLMRun | None:
        manager = get_callback_manager_for_config(config)
        if not manager.handlers:
            return None
        manager.add_metadata(
            {"ls_provider": PROVIDER, "ls_model_name": self.model_name, "ls_model_type": "chat"}
        )
        serialized = {"lc": 1, "type": "not_implemented", "id": ["langchain_rankguide", "graph"]}
        (run,) = manager.on_chat_model_start(
            serialized,
            [convert_to_messages([dict(m) for m in prompt])],
            name="rankguide",
            invocation_params={"model": self.model_name},
            batch_size=1,
        )
        return run

    @staticmethod
    def _send(run: CallbackManagerForLLMRun, chunks: list[AIMessageChunk], reply_id: str) -> None:
        message = AIMessageChunk(content="", id=reply_id)
        for chunk in chunks:
            run.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
            message = message + chunk
        # The whole of this callback run's output; it carries the reply's id, which the
        # stream has seen already, so it is not sent again.
        done = AIMessage(
            content=message.content,
            additional_kwargs=message.additional_kwargs,
            response_metadata=message.response_metadata,
            usage_metadata=message.usage_metadata,
            id=reply_id,
        )
        run.on_llm_end(LLMResult(generations=[[ChatGeneration(message=done)]]))


def _chunk(reply_id: str, piece: str, is_answer: bool) -> AIMessageChunk:
    if is_answer:
        return AIMessageChunk(content=piece, id=reply_id)
    return AIMessageChunk(content="", additional_kwargs={"reasoning_content": piece}, id=reply_id)
