"""The step engine on real (tiny, trained-in-code) Hugging Face models."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from langchain_rankguide.engine import (
    CaptureSettings,
    SamplingSettings,
    StepEngine,
    StepSettings,
    load_model,
)
from langchain_rankguide.errors import EngineError, ModelLoadError


@pytest.fixture(scope="module")
def srm(tiny_pair):
    return load_model(str(tiny_pair[0]))


@pytest.fixture(scope="module")
def lrm(tiny_pair):
    return load_model(str(tiny_pair[1]))


def prompt_of(loaded, question: str = "go") -> str:
    return loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def make_engine(loaded, **kwargs) -> StepEngine:
    kwargs.setdefault("settings", StepSettings(max_step_tokens=24))
    engine = StepEngine(loaded, **kwargs)
    engine.start(prompt_of(loaded))
    return engine


def generate_ids(loaded, ids: list[int], n: int) -> list[int]:
    out = loaded.model.generate(
        torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n
    )
    return out[0, len(ids) :].tolist()


def test_greedy_steps_equal_generate_from_the_same_ids(srm):
    engine = make_engine(srm)
    carried = 0
    for _ in range(8):
        before = list(engine.ids)
        draft = engine.draft_step()
        assert draft.token_ids == generate_ids(srm, before, draft.n_tokens)
        engine.commit(draft)
        carried += bool(draft.carried_text)
        if draft.ends_trace:
            break
    # The tiny tokenizer fuses "\n\nW": some steps must have crossed that boundary.
    assert carried >= 1


def test_uncut_steps_equal_one_generate_call(srm):
    engine = make_engine(srm)
    prompt_ids = list(engine.ids)
    produced: list[int] = []
    for _ in range(2):
        draft = engine.draft_step()
        assert not draft.carried_text
        engine.commit(draft)
        produced += draft.token_ids
    assert produced == generate_ids(srm, prompt_ids, len(produced))


def test_committed_text_ends_at_delimiter_and_carry_is_dropped(srm):
    engine = make_engine(srm)
    for _ in range(6):
        draft = engine.draft_step()
        engine.commit(draft)
        if draft.finish_reason == "delimiter":
            assert draft.text.endswith("\n\n")
            assert engine.committed_text().endswith(draft.text)
        if draft.carried_text:
            assert not engine.committed_text().endswith(draft.carried_text)


def test_foreign_text_then_greedy_equals_generate(srm):
    engine = make_engine(srm)
    engine.commit(engine.draft_step())
    before = engine.usage["prefill_tokens"]
    new_ids = engine.append_text("We get 19.\n\n")
    assert engine.usage["prefill_tokens"] - before == len(new_ids)
    ids = list(engine.ids)
    draft = engine.draft_step()
    assert draft.token_ids == generate_ids(srm, ids, draft.n_tokens)


def test_discard_crops_back_without_refeeding(srm):
    engine = make_engine(srm)
    engine.commit(engine.draft_step())
    ids = list(engine.ids)
    prefill = engine.usage["prefill_tokens"]
    first = engine.draft_step()
    engine.discard(first)
    assert engine.ids == ids
    assert engine.usage["prefill_tokens"] == prefill
    again = engine.draft_step()
    assert again.token_ids == first.token_ids
    assert again.text == first.text


def test_prefill_counts_only_new_tokens_over_twenty_steps(srm, lrm):
    srm_engine = make_engine(srm)
    lrm_engine = make_engine(lrm)
    prompt_len = len(srm_engine.ids)
    assert srm_engine.usage["prefill_tokens"] == prompt_len
    expected_prefill = prompt_len
    for step in range(20):
        before = dict(srm_engine.usage)
        draft = srm_engine.draft_step()
        if step % 3 == 2:
            srm_engine.discard(draft)
            lrm_draft = lrm_engine.draft_step()
            lrm_engine.commit(lrm_draft)
            new_ids = srm_engine.append_text(lrm_draft.text)
            expected_prefill += len(new_ids)
        else:
            committed = srm_engine.commit(draft)
            lrm_engine.append_text(draft.text)
            if draft.carried_text:
                # Only the re-encoded end of the step is prefilled, never the prefix.
                expected_prefill += len(committed) - (len(draft.token_ids) - 1)
        assert srm_engine.usage["prefill_tokens"] == expected_prefill
        assert srm_engine.usage["decode_tokens"] - before["decode_tokens"] <= draft.n_tokens
        if srm_engine.finished or lrm_engine.finished:
            break
    # Every token in the cache was fed exactly once, except discarded drafts (decoded, cropped).
    assert srm_engine.usage["prefill_tokens"] < 2 * prompt_len + 20 * 8


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_captured_states_equal_hidden_states(srm, layer):
    engine = make_engine(srm, capture=CaptureSettings(layers=(layer,), window=6, opening_states=3))
    engine.commit(engine.draft_step())
    draft = engine.draft_step()
    start, end = draft.start_position, len(engine.ids)
    with torch.inference_mode():
        reference = srm.model(torch.tensor([engine.ids]), output_hidden_states=True).hidden_states
    expected = reference[layer][0]
    torch.testing.assert_close(draft.step_hidden[layer], expected[start:end], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        draft.window_hidden[layer], expected[end - 6 : end], atol=1e-4, rtol=1e-4
    )
    opening = draft.opening_states[layer]
    assert opening.shape[0] == 2
    torch.testing.assert_close(opening[-1], expected[start - 1], atol=1e-4, rtol=1e-4)


def test_layer_out_of_range_is_a_clear_error(srm):
    with pytest.raises(EngineError, match="out of range"):
        StepEngine(srm, capture=CaptureSettings(layers=(7,)))


def test_first_token_distribution_and_peek_leave_cache(srm):
    engine = make_engine(srm)
    ids = list(engine.ids)
    probe = engine.next_logprobs()
    peek = engine.peek_logprobs("We get")
    assert engine.ids == ids
    assert not torch.equal(probe, peek)
    draft = engine.draft_step()
    torch.testing.assert_close(draft.first_token_logprobs, probe)
    assert draft.first_token_entropy >= 0


def test_sampling_is_reproducible_and_resumable(srm):
    sampling = SamplingSettings(temperature=1.0, seed=7)
    first = make_engine(srm, sampling=sampling)
    drafts = []
    for _ in range(3):
        draft = first.draft_step()
        drafts.append((draft.token_ids, first.commit(draft)))
    resumed = StepEngine(srm, settings=StepSettings(max_step_tokens=24), sampling=sampling)
    prompt_ids = first.tokenizer.encode(prompt_of(srm), add_special_tokens=False)
    resumed.start_ids(prompt_ids, [committed for _, committed in drafts[:2]])
    assert resumed.usage["prefill_tokens"] == len(resumed.ids)
    assert resumed.draft_step().token_ids == drafts[2][0]


def test_step_cap_and_budget(srm):
    engine = make_engine(srm, settings=StepSettings(max_step_tokens=3))
    draft = engine.draft_step()
    assert draft.n_tokens == 3 and draft.finish_reason == "max_tokens"
    engine.discard(draft)
    assert engine.draft_step(max_new_tokens=1).n_tokens == 1


def test_end_marker_stops_the_trace(srm):
    engine = make_engine(srm, settings=StepSettings(max_step_tokens=24, end_markers=("check",)))
    for _ in range(4):
        draft = engine.draft_step()
        engine.commit(draft)
        if draft.finish_reason == "end_marker":
            assert draft.text.endswith("check")
            assert engine.finished
            with pytest.raises(EngineError):
                engine.draft_step()
            return
    pytest.fail("the marker never appeared")


def test_loads_offline_with_sockets_disabled(tiny_pair, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = load_model(str(tiny_pair[0]))
    assert loaded.num_layers == 2 and loaded.identity == Path(tiny_pair[0]).name


def test_missing_path_and_uncached_id_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match=str(missing)):
        load_model(str(missing))
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_model("someone/not-a-cached-model")


def test_streamed_text_equals_the_draft_and_never_passes_the_cut(srm):
    engine = make_engine(srm)
    reference = make_engine(srm)
    for _ in range(5):
        stream = engine.stream_step()
        pieces = []
        while True:
            try:
                pieces.append(next(stream))
            except StopIteration as done:
                draft = done.value
                break
        assert "".join(pieces) == draft.text
        expected = reference.draft_step()
        assert draft.token_ids == expected.token_ids
        engine.commit(draft)
        reference.commit(expected)


def test_per_call_stop_strings_match_on_text(srm):
    engine = make_engine(srm)
    draft = engine.draft_step(stop=("12 an",), stop_at_delimiter=False)
    assert draft.finish_reason == "stop"
    assert draft.text.endswith("12 an")
    assert draft.n_tokens > 1  # a multi-token stop string
