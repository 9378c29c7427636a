"""Steering vectors: storage, scoped hooks at absolute positions, engine isolation, extraction."""

from __future__ import annotations

import argparse
import json
import struct
from contextlib import contextmanager

import pytest
import torch

from langchain_rankguide.engine import (
    CaptureSettings,
    StepEngine,
    StepSettings,
    capture_residual,
    find_decoder_layers,
    load_model,
)
from langchain_rankguide.engine.hooks import find_final_norm, residual_input
from langchain_rankguide.errors import RankGuideError
from langchain_rankguide.steering import (
    SIGN_CONVENTION,
    RankFilter,
    SteeringError,
    SteeringIntervention,
    SteeringVector,
    ThoughtRecord,
    build_vectors,
    collect_thoughts,
    delimiter_token_ids,
    random_direction,
    steer,
)

LAYER = 1
DEPTH = 3
HIDDEN = 32
TEXT = "we add 12 and 3.\n\nWait check 15.\n\nso 15 then 4\n\nWe get 19.\n\n"


@pytest.fixture(scope="module")
def srm(tmp_path_factory: pytest.TempPathFactory):
    """A 3-block tiny model (so layer 1 is a middle block), trained briefly to emit delimiters."""
    from tiny_models import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("steer-srm")
    build_tokenizer(folder)
    build_model(folder, layers=DEPTH, hidden=HIDDEN, train_steps=40)
    return load_model(str(folder))


def prompt_of(loaded, question: str = "go") -> str:
    return loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def make_vector(loaded, layer: int = LAYER, seed: int = 0, norm: float = 8.0) -> SteeringVector:
    return SteeringVector(
        random_direction(HIDDEN, norm, seed),
        layer=layer,
        model_identity=loaded.identity,
        num_layers=loaded.num_layers,
    )


def all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def expected_mask(loaded, ids: list[int], rule: str, prompt_length: int) -> torch.Tensor:
    """Which positions the rule chooses, decided from token texts (independent of the code)."""
    texts = [loaded.tokenizer.decode([i]) for i in ids]
    if rule == "delimiter":
        return torch.tensor(["\n\n" in t for t in texts])
    if rule == "generated":
        return torch.arange(len(ids)) >= prompt_length
    return torch.ones(len(ids), dtype=torch.bool)


def feed_chunks(model, ids: list[int], prompt_length: int, layer: int) -> torch.Tensor:
    """Prefill the prompt, then decode the rest one token at a time with a KV cache.

    Returns the residual stream entering ``layer`` at every position (captured by the engine's
    capture hook, which runs after the steering hook).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    rows = []
    chunks = [ids[:prompt_length]] + [[i] for i in ids[prompt_length:]]
    with torch.inference_mode():
        for chunk in chunks:
            with capture_residual(model, [layer], DEPTH) as captured:
                model(input_ids=torch.tensor([chunk]), cache=cache, use_cache=True)
            rows.append(captured[layer][0])
    return torch.cat(rows)


# --------------------------------------------------------------------------- storage


def test_save_load_round_trip_is_plain_safetensors(srm, tmp_path):
    vector = make_vector(srm)
    vector.samples = {"execution": 3, "reflection": 2, "transition": 0, "total": 5}
    vector.filter = {"signal": "rank.effective", "k": 4.0, "keep": "above"}
    path = vector.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(path)
    assert torch.equal(loaded.vector, vector.vector)
    assert loaded.metadata() == vector.metadata()
    assert loaded.sign_convention == SIGN_CONVENTION
    # The file is exactly: 8-byte header length, JSON header, raw float32 data. No pickle.
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) == {"vector", "__metadata__"}
    assert header["vector"]["dtype"] == "F32" and header["vector"]["shape"] == [HIDDEN]
    assert len(raw) == 8 + header_len + 4 * HIDDEN
    meta = json.loads(header["__metadata__"]["rankguide_steering"])
    assert meta["layer"] == LAYER and meta["hidden_size"] == HIDDEN
    assert meta["model_identity"] == srm.identity
    assert meta["norm"] == pytest.approx(8.0, rel=1e-5)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(path))["vector"], vector.vector)


def test_load_refuses_pickles_foreign_files_and_tampering(tmp_path):
    pickled = tmp_path / "v.pt"
    torch.save({"vector": torch.ones(4)}, pickled)
    with pytest.raises(SteeringError, match="not a readable safetensors"):
        SteeringVector.load(pickled)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.ones(4)}, str(foreign))
    with pytest.raises(SteeringError, match="not a RankGuide steering vector"):
        SteeringVector.load(foreign)
    tampered = tmp_path / "tampered.safetensors"
    meta = SteeringVector(torch.ones(4), layer=0).metadata()
    save_file(
        {"vector": torch.ones(4) * 2}, str(tampered), {"rankguide_steering": json.dumps(meta)}
    )
    with pytest.raises(SteeringError, match="stored norm"):
        SteeringVector.load(tampered)
    with pytest.raises(SteeringError, match="not found"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_mismatched_model_is_refused_naming_both_values(srm):
    other = SteeringVector(torch.ones(HIDDEN), layer=LAYER, model_identity="someone-else")
    with pytest.raises(SteeringError, match=rf"'someone-else'.*'{srm.identity}'"):
        other.check_compatible(srm)
    other.check_compatible(srm, check_identity=False)
    wide = SteeringVector(torch.ones(HIDDEN + 1), layer=LAYER, model_identity=srm.identity)
    with pytest.raises(SteeringError, match=rf"hidden size {HIDDEN + 1}.*{HIDDEN}"):
        wide.check_compatible(srm)
    deep = SteeringVector(torch.ones(HIDDEN), layer=DEPTH + 1, model_identity=srm.identity)
    with pytest.raises(SteeringError, match=rf"layer {DEPTH + 1}.*{DEPTH} decoder blocks"):
        deep.check_compatible(srm)
    with pytest.raises(SteeringError, match="hidden size"), steer(srm, wide):
        pass
    with pytest.raises(SteeringError, match="decoder blocks"):
        SteeringIntervention.for_model(srm, deep)
    assert issubclass(SteeringError, RankGuideError)
    with pytest.raises(SteeringError, match="NaN"):
        SteeringVector(torch.tensor([1.0, float("nan")]), layer=0)


# --------------------------------------------------------------------------- positions


def test_delimiter_ids_include_fused_tokens(srm):
    tok = srm.tokenizer
    ids = delimiter_token_ids(tok, "\n\n")
    fused = {tok.convert_tokens_to_ids(t) for t in (".\n\n", "\n\nW", "\n\n")}
    assert fused <= ids
    assert tok.convert_tokens_to_ids("\n") not in ids
    encoded = tok.encode(TEXT, add_special_tokens=False)
    assert any(tok.decode([i]) == ".\n\n" for i in encoded)
    assert any(tok.decode([i]) == "\n\nW" for i in encoded)


@pytest.mark.parametrize("layer", [LAYER, DEPTH])
@pytest.mark.parametrize("rule", ["delimiter", "generated", "all"])
def test_residual_changes_only_at_chosen_positions_in_prefill_and_decode(srm, rule, layer):
    model = srm.model
    prompt_ids = srm.tokenizer.encode(prompt_of(srm), add_special_tokens=False)
    prompt_ids += srm.tokenizer.encode("we add 12.\n\n", add_special_tokens=False)
    ids = prompt_ids + srm.tokenizer.encode(TEXT, add_special_tokens=False)
    vector, scale = make_vector(srm, layer=layer), 0.5
    plain = feed_chunks(model, ids, len(prompt_ids), layer)
    with steer(srm, vector, scale=scale, positions=rule) as handle:
        steered = feed_chunks(model, ids, len(prompt_ids), layer)
    chosen = expected_mask(srm, ids, rule, len(prompt_ids))
    assert chosen[len(prompt_ids) :].any()
    if rule == "delimiter":  # delimiters occur both in the prefilled prompt and in the decode
        assert chosen[: len(prompt_ids)].any()
    assert handle.steered_positions == int(chosen.sum())
    delta = (vector.vector * scale).to(plain.dtype)
    torch.testing.assert_close(steered[chosen], plain[chosen] + delta, rtol=0, atol=1e-6)
    assert torch.equal(steered[~chosen], plain[~chosen])
    assert all_hooks(model) == 0


def test_generate_tracks_absolute_positions_through_the_cache(srm):
    model = srm.model
    prompt_ids = srm.tokenizer.encode(prompt_of(srm), add_special_tokens=False)
    prompt_ids += srm.tokenizer.encode(TEXT, add_special_tokens=False)
    vector = make_vector(srm)
    chunks: list[torch.Tensor] = []

    def record(_module, args, kwargs):  # registered after steering's hook: sees the result
        chunks.append(residual_input(args, kwargs)[0].detach().clone())

    block = find_decoder_layers(model)[LAYER]
    handle = block.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with steer(srm, vector, scale=2.0, positions="delimiter"):
            out = model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False
            )
    finally:
        handle.remove()
    ids = out[0].tolist()
    steered = torch.cat(chunks)
    assert len(chunks) == 24 and steered.shape[0] == len(ids) - 1  # last token is never fed
    # States entering block LAYER do not depend on steering at LAYER: one unsteered pass over
    # the same ids gives the reference.
    with torch.inference_mode(), capture_residual(model, [LAYER], DEPTH) as captured:
        model(input_ids=torch.tensor([ids[:-1]]))
    plain = captured[LAYER][0]
    chosen = expected_mask(srm, ids[:-1], "delimiter", 0)
    assert chosen[len(prompt_ids) :].any(), "the steered model should still emit delimiters"
    torch.testing.assert_close(
        steered[chosen], plain[chosen] + 2.0 * vector.vector, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(steered[~chosen], plain[~chosen], atol=1e-5, rtol=0)


def test_scale_zero_generate_is_token_identical(srm):
    ids = torch.tensor([srm.tokenizer.encode(prompt_of(srm), add_special_tokens=False)])
    kwargs = {"max_new_tokens": 40, "min_new_tokens": 40, "do_sample": False}
    plain = srm.model.generate(ids, **kwargs)
    with steer(srm, make_vector(srm), scale=0.0, positions="all"):
        zero = srm.model.generate(ids, **kwargs)
    with steer(srm, make_vector(srm, norm=50.0), scale=1.0, positions="all"):
        pushed = srm.model.generate(ids, **kwargs)
    assert torch.equal(plain, zero)
    assert not torch.equal(plain, pushed)


# --------------------------------------------------------------------------- hook lifetime


def test_hooks_are_removed_after_exceptions_and_generator_close(srm):
    model = srm.model
    vector = make_vector(srm)
    ids = torch.tensor([srm.tokenizer.encode(TEXT, add_special_tokens=False)])
    with pytest.raises(ValueError, match="outside"), steer(srm, vector):
        raise ValueError("outside the model")
    assert all_hooks(model) == 0

    def explode(*_args):
        raise RuntimeError("inside the block")

    later = find_decoder_layers(model)[LAYER + 1].register_forward_pre_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="inside the block"), steer(srm, vector):
            model(input_ids=ids)
    finally:
        later.remove()
    assert all_hooks(model) == 0

    def stream():
        with steer(srm, vector, positions="all"):
            for i in range(3):
                model(input_ids=ids[:, : i + 1])
                yield i

    gen = stream()
    next(gen)
    assert all_hooks(model) > 0
    gen.close()
    assert all_hooks(model) == 0

    # The final-norm hook (layer == depth) is removed the same way.
    with steer(srm, make_vector(srm, layer=DEPTH), positions="all"):
        assert len(find_final_norm(model)._forward_hooks) == 1
    assert all_hooks(model) == 0


def test_block_called_with_keyword_or_returning_bare_tensor(srm):
    """The hook handles hidden_states by keyword and blocks that return a bare tensor."""
    block = find_decoder_layers(srm.model)[LAYER]
    vector = make_vector(srm)
    intervention = SteeringIntervention(vector, scale=1.0, positions="all")
    hidden = torch.randn(1, 3, HIDDEN)
    seen = []

    def grab(_m, args, kwargs):
        seen.append(residual_input(args, kwargs))

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pos = torch.arange(3)
        position_embeddings = srm.model.model.rotary_emb(hidden, pos.unsqueeze(0))
        for call in ("positional", "keyword"):
            with torch.inference_mode(), intervention(srm.model, pos, [5, 6, 7]):
                if call == "positional":
                    block(hidden, position_embeddings=position_embeddings)
                else:
                    block(hidden_states=hidden, position_embeddings=position_embeddings)
    finally:
        handle.remove()
    for got in seen:
        torch.testing.assert_close(got, hidden + vector.vector, rtol=0, atol=0)

    # A module returning a bare tensor at the final-norm point.
    final = SteeringIntervention(make_vector(srm, layer=DEPTH), positions="all")
    with torch.inference_mode(), final(srm.model, pos, [5, 6, 7]):
        out = find_final_norm(srm.model)(hidden)
    torch.testing.assert_close(
        out, find_final_norm(srm.model)(hidden) + make_vector(srm, layer=DEPTH).vector
    )
    assert all_hooks(srm.model) == 0


class _TupleBlock(torch.nn.Module):
    """A block that takes hidden_states by keyword and returns a tuple (older HF layouts)."""

    def forward(self, hidden_states, **_kwargs):
        return (hidden_states * 2.0, None)


class _TupleNorm(torch.nn.Module):
    def forward(self, hidden_states):
        return (hidden_states + 1.0,)


class _Toy(torch.nn.Module):
    """A bare torch model in the Llama layout: blocks and norm return tuples."""

    def __init__(self, depth: int = 2, hidden: int = 4) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(hidden_size=hidden, num_hidden_layers=depth)
        self.model = torch.nn.Module()
        self.model.embed = torch.nn.Embedding(10, hidden)
        self.model.layers = torch.nn.ModuleList(_TupleBlock() for _ in range(depth))
        self.model.norm = _TupleNorm()

    def forward(self, input_ids, cache=None):
        hidden = self.model.embed(input_ids)
        for block in self.model.layers:
            hidden = block(hidden_states=hidden)[0]
        return self.model.norm(hidden)[0]


@pytest.mark.parametrize("layer", [1, 2])
def test_bare_module_with_tuple_outputs_and_keyword_hidden_states(layer):
    toy = _Toy()
    ids = torch.tensor([[1, 7, 3, 7]])
    vector = SteeringVector(torch.tensor([1.0, 2.0, 3.0, 4.0]), layer=layer)
    plain = toy(ids)
    with steer(toy, vector, scale=1.0, delimiter_token_ids=[7]) as handle:
        steered = toy(ids)
    # Added before block 1 it is doubled by the last block; at the norm output it is added once.
    factor = 2.0 if layer == 1 else 1.0
    delta = steered - plain
    torch.testing.assert_close(delta[0, [1, 3]], factor * vector.vector.expand(2, 4))
    assert torch.equal(delta[0, [0, 2]], torch.zeros(2, 4))
    assert handle.steered_positions == 2 and all_hooks(toy) == 0
    with pytest.raises(SteeringError, match="tokenizer"), steer(toy, vector):
        pass


# --------------------------------------------------------------------------- the engine


class Probe:
    """An intervention entered after steering: hooks block LAYER before and after it."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor]] = []

    @contextmanager
    def __call__(self, model, positions, input_ids):
        block = find_decoder_layers(model)[LAYER]
        seen: dict[str, torch.Tensor] = {}

        def before(_m, args, kwargs):
            seen["before"] = residual_input(args, kwargs)[0].clone()

        def after(_m, args, kwargs):
            seen["after"] = residual_input(args, kwargs)[0].clone()

        handles = [
            block.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
            block.register_forward_pre_hook(after, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        self.calls.append((positions.cpu(), list(input_ids), seen["before"], seen["after"]))


def run_steps(engine: StepEngine, n: int) -> list[list[int]]:
    out = []
    for _ in range(n):
        draft = engine.draft_step()
        engine.commit(draft)
        out.append(draft.token_ids)
        if draft.ends_trace:
            break
    return out


def make_engine(loaded, *interventions, capture=None) -> StepEngine:
    engine = StepEngine(
        loaded,
        settings=StepSettings(max_step_tokens=12),
        capture=capture or CaptureSettings(),
        interventions=list(interventions),
    )
    engine.start(prompt_of(loaded))
    return engine


@pytest.mark.parametrize("rule", ["delimiter", "generated"])
def test_engine_steers_exactly_the_chosen_absolute_positions(srm, rule):
    vector = make_vector(srm)
    prompt_length = len(srm.tokenizer.encode(prompt_of(srm), add_special_tokens=False))
    steering = SteeringIntervention.for_model(
        srm, vector, scale=3.0, positions=rule, prompt_length=prompt_length
    )
    probe = Probe()
    engine = make_engine(srm, steering, probe, capture=CaptureSettings(layers=(LAYER,)))
    run_steps(engine, 5)
    delimiters = delimiter_token_ids(srm.tokenizer)
    decode_hits = 0
    for positions, ids, before, after in probe.calls:
        if rule == "delimiter":
            chosen = torch.tensor([i in delimiters for i in ids])
        else:
            chosen = positions >= prompt_length
        decode_hits += int(len(ids) == 1 and bool(chosen.any()))
        torch.testing.assert_close(
            after[chosen], before[chosen] + 3.0 * vector.vector, atol=1e-6, rtol=0
        )
        assert torch.equal(after[~chosen], before[~chosen])
    assert decode_hits > 0, "some single-token decode passes must have been steered"
    assert steering.handle.steered_positions > 0
    assert all_hooks(srm.model) == 0


def test_engine_scale_zero_gives_identical_drafts(srm):
    plain = run_steps(make_engine(srm), 6)
    zero = SteeringIntervention.for_model(srm, make_vector(srm), scale=0.0, positions="all")
    assert run_steps(make_engine(srm, zero), 6) == plain
    assert zero.handle.steered_positions > 0  # the hook did run, adding exact zeros


def test_two_engines_on_one_model_never_leak(srm):
    def steering(seed, rule):
        return SteeringIntervention.for_model(
            srm, make_vector(srm, seed=seed, norm=40.0), scale=1.0, positions=rule
        )

    plain = run_steps(make_engine(srm), 6)
    alone_a = run_steps(make_engine(srm, steering(1, "delimiter")), 6)
    alone_b = run_steps(make_engine(srm, steering(2, "all")), 6)
    assert alone_a != plain and alone_b != plain and alone_a != alone_b
    a = make_engine(srm, steering(1, "delimiter"))
    b = make_engine(srm, steering(2, "all"))
    c = make_engine(srm)
    got: dict[str, list[list[int]]] = {"a": [], "b": [], "c": []}
    for _ in range(6):
        for name, engine in (("a", a), ("b", b), ("c", c)):
            if engine.finished:
                continue
            draft = engine.draft_step()
            engine.commit(draft)
            got[name].append(draft.token_ids)
    assert got == {"a": alone_a, "b": alone_b, "c": plain}
    assert all_hooks(srm.model) == 0


def test_generated_rule_infers_and_accepts_prompt_length(srm):
    vector = make_vector(srm)
    inferred = SteeringIntervention.for_model(srm, vector, positions="generated")
    engine = make_engine(srm, inferred)
    assert inferred.prompt_length == len(engine.ids)
    inferred.prompt_length = 3
    assert inferred.prompt_length == 3
    with pytest.raises(SteeringError, match="delimiter"):
        SteeringIntervention(vector, positions="delimiter")
    with pytest.raises(SteeringError, match="unknown position rule"):
        SteeringIntervention(vector, positions="middle")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- extraction


def synthetic_records() -> list[ThoughtRecord]:
    """Execution states around e1, reflection around e2, transition around e3; rank = length."""
    e = torch.eye(4)
    rows = []
    texts = {
        "execution": "12 + 3 = 15.",
        "reflection": "Wait, check 12 + 3.",
        "transition": "Alternatively, add.",
    }
    basis = {"execution": e[0], "reflection": e[1], "transition": e[2]}
    for label in ("execution", "reflection", "transition"):
        for j, length in enumerate((2, 5, 9, 12)):
            noise = (j - 1.5) * e[3]  # cancels over the four
            rows.append(
                ThoughtRecord(
                    texts[label],
                    basis[label] * (1 + j) + noise,
                    rank=float(length),
                    n_tokens=length + (j % 2),
                )
            )
    return rows


def test_seal_vector_is_the_mean_difference():
    records = synthetic_records()
    result = build_vectors(records, layer=2, model_identity="m", num_layers=4)
    mean = torch.tensor([1.0, 2.0, 3.0, 4.0]).mean()
    expected = torch.tensor([mean, -mean / 2, -mean / 2, 0.0])
    torch.testing.assert_close(result.seal.vector, expected)
    assert result.seal.samples == {"execution": 4, "reflection": 4, "transition": 4, "total": 12}
    assert result.rank_filtered is None and result.length_matched is None
    assert result.chosen is result.seal
    assert result.random.norm == pytest.approx(result.seal.norm, rel=1e-6)


@pytest.mark.parametrize(
    ("rank_filter", "kept_j"),
    [
        (RankFilter(k=9.0), (2, 3)),
        (RankFilter(percentile=50.0), (2, 3)),  # median of 2,5,9,12 (pooled) is 7
        (RankFilter(k=5.0, keep="below"), (0, 1)),
    ],
)
def test_rank_filter_keeps_the_right_thoughts(rank_filter, kept_j):
    records = synthetic_records()
    result = build_vectors(records, layer=2, rank_filter=rank_filter, seed=3)
    assert result.kept == [4 * c + j for c in range(3) for j in kept_j]
    # The noise along e4 cancels; each class contributes its mean scale s along its own axis.
    s = sum(1 + j for j in kept_j) / len(kept_j)
    torch.testing.assert_close(result.rank_filtered.vector, torch.tensor([s, -s / 2, -s / 2, 0.0]))
    filt = result.rank_filtered.filter
    assert filt["keep"] == rank_filter.keep and filt["kept"] == 6 and filt["candidates"] == 12
    # The length control keeps the same number per label, chosen by length alone.
    assert result.length_matched.samples == result.rank_filtered.samples
    lengths = [records[i].n_tokens for i in result.length_kept]
    assert len(result.length_kept) == 6
    pool = sorted((r.n_tokens for r in records[:4]), reverse=rank_filter.keep == "above")
    assert sorted(lengths[:2], reverse=rank_filter.keep == "above") == pool[:2]
    assert result.random.norm == pytest.approx(result.rank_filtered.norm, rel=1e-6)
    assert result.chosen is result.rank_filtered


def test_controls_are_seeded_and_failures_are_clear():
    records = synthetic_records()
    a = build_vectors(records, layer=1, seed=5).random.vector
    b = build_vectors(records, layer=1, seed=5).random.vector
    c = build_vectors(records, layer=1, seed=6).random.vector
    assert torch.equal(a, b) and not torch.equal(a, c)
    only_execution = [r for r in records if r.text.startswith("12")]
    with pytest.raises(SteeringError, match="reflection or transition"):
        build_vectors(only_execution, layer=1)
    with pytest.raises(SteeringError, match="exactly one"):
        RankFilter()
    with pytest.raises(SteeringError, match="execution"):
        build_vectors(records, layer=1, rank_filter=RankFilter(k=100.0))
    wrong = [
        ThoughtRecord(r.text, r.state, r.rank, r.n_tokens, correct=i % 2 == 0)
        for i, r in enumerate(records)
    ]
    assert build_vectors(wrong, layer=1, correct_only=True).seal.samples["total"] == 6


def test_collect_thoughts_runs_the_engine_and_records_opening_states(srm):
    class P:
        def __init__(self, i):
            self.id, self.question = f"p{i}", "go"

    records = collect_thoughts(
        srm,
        [P(0), P(1)],
        layer=LAYER,
        prompt_for=lambda p: prompt_of(srm, p.question),
        settings=StepSettings(max_step_tokens=12),
        max_steps=5,
    )
    assert records and all(r.state.shape == (HIDDEN,) for r in records)
    assert all(r.rank is not None and r.n_tokens > 0 and r.step_index >= 1 for r in records)
    assert {r.problem_id for r in records} == {"p0", "p1"}
    assert records[0].problem_id == "p0" and records[0].step_index == 1
    # The opening state is the residual entering LAYER at the last token of the previous step.
    engine = make_engine(srm, capture=CaptureSettings(layers=(LAYER,)))
    first = engine.draft_step()
    engine.commit(first)
    with torch.inference_mode(), capture_residual(srm.model, [LAYER], DEPTH) as captured:
        srm.model(input_ids=torch.tensor([engine.ids]))
    torch.testing.assert_close(records[0].state, captured[LAYER][0][-1], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- the command


def test_steer_extract_command_writes_the_vector_and_controls(srm, tmp_path, capsys):
    from langchain_rankguide.commands import steer as steer_command

    parser = argparse.ArgumentParser(prog="rankguide")
    steer_command.register(parser.add_subparsers())
    out = tmp_path / "vec.safetensors"
    args = parser.parse_args(
        [
            "steer",
            "extract",
            "--model",
            srm.source,
            "--n",
            "2",
            "--max-steps",
            "5",
            "--layer",
            str(LAYER),
            "--k-percentile",
            "0",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chosen"] == "rank_filtered" and summary["layer"] == LAYER
    names = {"vec", "vec-seal", "vec-length", "vec-random"}
    assert {p.stem for p in tmp_path.glob("*.safetensors")} == names
    chosen = SteeringVector.load(out)
    assert chosen.method == "rank_filtered" and chosen.layer == LAYER
    assert chosen.model_identity == srm.identity and chosen.filter["percentile"] == 0.0
    assert SteeringVector.load(tmp_path / "vec-random.safetensors").norm == pytest.approx(
        chosen.norm
    )
    chosen.check_compatible(srm)
    show = parser.parse_args(["steer", "show", str(out)])
    assert show.handler(show) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "rank_filtered"
