"""Echo requests (``Repeat: <phrase>`` answered with the phrase) for the copy-curriculum runs."""

import random

from langchain_rankguide.demo.tools import _string_value, made_up_word


def echo_phrase(rng: random.Random) -> str:
    """1-4 parts: made-up words (some joined by ``_`` like tool names), numbers, tool values."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.5:
            word = made_up_word(rng, (1, 3))
            parts.append(word + ("_" + made_up_word(rng) if rng.random() < 0.3 else ""))
        elif roll < 0.7:
            parts.append(str(rng.randint(0, 999)))
        else:
            parts.append(_string_value(rng, made_up=True))
    return " ".join(parts)


def make_echo(rng: random.Random) -> list[dict[str, str]]:
    phrase = echo_phrase(rng)
    return [
        {"role": "user", "content": f"Repeat: {phrase}"},
        {"role": "assistant", "content": phrase},
    ]
