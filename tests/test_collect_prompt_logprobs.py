"""Prompt logprobs from the runner's prefill: what the ``prompt`` tier of an endpoint returns."""

import numpy as np
import torch

from kvfp.compressors import parse_scheme
from kvfp.runner import generate, replay
from tests.conftest import prompt


def _plain_prompt_logprobs(model, ids: list[int]) -> np.ndarray:
    """Independent computation: one forward of the plain model over the whole prompt."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (L, V)
    lp = torch.log_softmax(logits, dim=-1)[:-1].gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return lp.numpy()


def test_none_prompt_logprobs_match_a_plain_forward_with_left_padding(tiny, heldout_ids):
    model, tok = tiny
    prompts = [prompt(heldout_ids, tok, 120), prompt(heldout_ids, tok, 75, offset=300)]
    traces = generate(model, parse_scheme("none"), prompts, 3, batch_size=2)
    for p, tr in zip(prompts, traces):
        assert len(tr.prompt_logprobs) == len(p) and tr.prompt_logprobs[0] is None
        got = np.array(tr.prompt_logprobs[1:], dtype=np.float64)
        np.testing.assert_allclose(got, _plain_prompt_logprobs(model, p), atol=1e-4, rtol=0)
        assert np.all(got <= 0)


def test_prompt_logprobs_follow_the_scheme_phase(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 96)
    ref = generate(model, parse_scheme("none"), [p], 2)[0]
    # a decode-phase scheme leaves the prefill exact; a window acts during the prefill too
    decode_only = generate(model, parse_scheme("int2-pertoken"), [p], 2)[0]
    windowed = generate(model, parse_scheme("window-32"), [p], 2)[0]
    assert parse_scheme("int2-pertoken").gene.phase == "decode"
    assert decode_only.prompt_logprobs == ref.prompt_logprobs
    head = ref.prompt_logprobs[1:32]  # positions that see fewer than 32 tokens are untouched
    assert windowed.prompt_logprobs[1:32] == head
    diff = np.abs(np.array(ref.prompt_logprobs[40:]) - np.array(windowed.prompt_logprobs[40:]))
    assert diff.max() > 1e-3


def test_prompt_logprobs_can_be_turned_off_and_replay_fills_them(tiny, heldout_ids):
    model, tok = tiny
    p = prompt(heldout_ids, tok, 64)
    off = generate(model, parse_scheme("none"), [p], 3, prompt_logprobs=False)[0]
    assert off.prompt_logprobs is None
    on = replay(model, parse_scheme("none"), [p], [off.output_ids])[0]
    np.testing.assert_allclose(on.prompt_logprobs[1:], _plain_prompt_logprobs(model, p), atol=1e-4, rtol=0)
