"""The runner core: attaching schemes through transformers' extension points."""

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from kvfp.compressors import parse_scheme
from kvfp.runner import generate, replay
from tests.conftest import prompt

NEW = 8


def hf_greedy_logits(model, ids, mask, n):
    """The model without kvfp: transformers' own generate, greedy."""
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, output_logits=True, return_dict_in_generate=True,
                         pad_token_id=model.config.pad_token_id)
    return torch.stack(out.logits, dim=1).float(), out.sequences[:, ids.shape[1]:]


@pytest.mark.parametrize("which", ["tiny", "tiny_eager"])
def test_none_equals_plain_model_exactly(which, request, heldout_ids):
    model, tok = request.getfixturevalue(which)
    p = prompt(heldout_ids, tok, 300)
    ref_logits, ref_tokens = hf_greedy_logits(model, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), NEW)
    tr = generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]
    assert tr.output_ids == ref_tokens[0].tolist()
    assert torch.equal(torch.from_numpy(tr.logits), ref_logits[0])


def test_none_equals_plain_model_with_left_padding(tiny, heldout_ids):
    model, tok = tiny
    p1, p2 = prompt(heldout_ids, tok, 200), prompt(heldout_ids, tok, 130, offset=500)
    pad = model.config.pad_token_id
    ids = torch.tensor([p1, [pad] * 70 + p2])
    mask = torch.tensor([[1] * 200, [0] * 70 + [1] * 130])
    ref_logits, ref_tokens = hf_greedy_logits(model, ids, mask, NEW)
    trs = generate(model, parse_scheme("none"), [p1, p2], NEW, logits=True, batch_size=2)
    for i, tr in enumerate(trs):
        assert tr.output_ids == ref_tokens[i].tolist()
        assert torch.equal(torch.from_numpy(tr.logits), ref_logits[i])


# A batch changes float rounding, which `none` shows stays under 2e-4; under quantisation it can
# also move a value across a rounding boundary, a whole int8 step. Measured on the shipped weights:
# for the second prompt, one key code (layer 3, second decoded token) differs by one step and the
# logits by 6.1e-4; the other two prompts agree to 5e-6. Padding leaking into attention would
# differ by ~1e-1.
ATOL_BATCHED = {"none": 2e-4, "int8-pertoken": 2e-3, "window-64": 2e-4}


@pytest.mark.parametrize("name", ["none", "int8-pertoken", "window-64"])
def test_batched_left_padding_matches_single_runs(tiny, heldout_ids, name):
    model, tok = tiny
    prompts = [prompt(heldout_ids, tok, 150), prompt(heldout_ids, tok, 97, offset=400),
               prompt(heldout_ids, tok, 40, offset=900)]
    scheme = parse_scheme(name)
    batched = generate(model, scheme, prompts, NEW, logits=True, batch_size=3)
    for p, tb in zip(prompts, batched):
        single = generate(model, scheme, [p], NEW, logits=True)[0]
        assert tb.meta["nuisance"]["batch_size"] == 3
        np.testing.assert_allclose(tb.logits, single.logits, atol=ATOL_BATCHED[name], rtol=0)


def test_window_shorter_prompt_equals_none(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 100)
    a = generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]
    b = generate(model, parse_scheme(f"window-{100 + NEW}"), [p], NEW, logits=True)[0]
    assert a.output_ids == b.output_ids
    assert np.array_equal(a.logits, b.logits)


def test_window_equals_banded_mask_on_uncompressed_model(tiny_eager, heldout_ids):
    """Independent computation: one full forward, no cache, an explicit banded 4D mask."""
    model, tok = tiny_eager
    n_window, L = 48, 160
    p = prompt(heldout_ids, tok, L)
    tr = generate(model, parse_scheme(f"window-{n_window}"), [p], NEW, logits=True)[0]
    full = torch.tensor([p + tr.output_ids[:-1]])
    T = full.shape[1]
    i = torch.arange(T)
    allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - n_window)
    mask = torch.zeros(1, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=mask, position_ids=i[None]).logits[0, L - 1:].float()
    np.testing.assert_allclose(tr.logits, ref.numpy(), atol=1e-4, rtol=0)
    # and it differs from full attention, so the band is doing something
    none = generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]
    assert np.abs(none.logits - tr.logits).max() > 1e-2


def test_window_keeps_exactly_its_budget(tiny, heldout_ids):
    from kvfp.runner import attach

    model, tok = tiny
    p = prompt(heldout_ids, tok, 90)
    with attach(model, parse_scheme("window-32")) as att:
        cache = att.new_cache()
        mask = torch.ones(1, len(p), dtype=torch.long)
        cache.begin_step(mask)
        with torch.no_grad():
            model(input_ids=torch.tensor([p]), attention_mask=mask, position_ids=torch.arange(len(p))[None],
                  cache=cache, kvfp_cache=cache)
        for layer in cache.layers:
            assert len(layer) == 32 and layer.kv.keys().shape[-2] == 32
            assert layer.slots[0, 0].tolist() == list(range(90 - 32, 90))


def test_int8_close_to_none_but_not_equal(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 400)
    none = generate(model, parse_scheme("none"), [p], NEW, logits=True)[0]
    q8 = replay(model, parse_scheme("int8-pertoken"), [p], [none.output_ids], logits=True)[0]
    diff = np.abs(none.logits - q8.logits)
    assert np.array_equal(none.logits[0], q8.logits[0])  # prefill attends at full precision
    assert diff[1:].max() > 0  # decode reads the int8 cache
    spread = none.logits.max(-1) - none.logits.min(-1)
    assert diff.max() < 0.02 * spread.min()  # …and stays close


def test_replay_of_generated_tokens_reproduces_generation(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 120)
    for name in ["none", "int8-pertoken", "window-50"]:
        g = generate(model, parse_scheme(name), [p], NEW, logits=True)[0]
        r = replay(model, parse_scheme(name), [p], [g.output_ids], logits=True)[0]
        assert r.mode == "replay" and g.mode == "generate"
        assert np.array_equal(g.logits, r.logits)
        assert r.token_logprobs == g.token_logprobs


def test_replay_batches_continuations_of_different_lengths(tiny, heldout_ids):
    model, tok = tiny
    prompts = [prompt(heldout_ids, tok, 60), prompt(heldout_ids, tok, 45, offset=300)]
    conts = [heldout_ids[1000:1006].tolist(), heldout_ids[2000:2003].tolist()]
    batched = replay(model, parse_scheme("int8-pertoken"), prompts, conts, batch_size=2, logits=True)
    assert [t.steps for t in batched] == [6, 3]
    for p, c, tb in zip(prompts, conts, batched):
        single = replay(model, parse_scheme("int8-pertoken"), [p], [c], logits=True)[0]
        assert tb.output_ids == c
        np.testing.assert_allclose(tb.logits, single.logits, atol=2e-4, rtol=0)


def test_trace_topk_is_consistent_with_logits(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 50)
    tr = generate(model, parse_scheme("none"), [p], 4, topk=5, logits=True)[0]
    lp = torch.log_softmax(torch.from_numpy(tr.logits), -1)
    for t in range(4):
        assert tr.topk_ids[t] == lp[t].topk(5).indices.tolist()
        assert tr.output_ids[t] == tr.topk_ids[t][0]  # greedy
        assert tr.token_logprobs[t] == pytest.approx(lp[t, tr.output_ids[t]].item(), abs=1e-6)


def test_detach_restores_attention_even_on_error(tiny):
    from kvfp.runner import attach

    model, _ = tiny
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"):
        with attach(model, parse_scheme("none")):
            assert model.config._attn_implementation == "kvfp"
            raise RuntimeError("boom")
    assert model.config._attn_implementation == before
    # the plain model still runs as before, with its own cache
    with torch.no_grad():
        model(input_ids=torch.tensor([[0, 5, 6]]), cache=DynamicCache(config=model.config))
