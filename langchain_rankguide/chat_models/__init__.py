"""LangChain chat models: a steerable local Hugging Face model, and RankGuide as a chat model.

* :class:`ChatSteeredHuggingFace`: any local causal LM (the SRM), optionally steered, with
  tools, structured output, streaming, async and per-step signals.
* :class:`ChatRankGuide`: the whole SRM + LRM collaboration; the answer is the content, the
  reasoning steps ``additional_kwargs["reasoning_content"]``, the step records
  ``response_metadata["steps"]``.

Constructing either loads nothing; models load on first use through the shared registry.
"""

from langchain_rankguide.chat_models.huggingface import ChatSteeredHuggingFace
from langchain_rankguide.chat_models.rankguide import ChatRankGuide

__all__ = ["ChatRankGuide", "ChatSteeredHuggingFace"]
