"""`kvfp serve`'s routes in process: request validation, response shapes, and `none` served
exactly as plain transformers computes it."""

import math

import pytest
import torch
from fastapi.testclient import TestClient

from kvfp.serve import Backend, ServeConfig, make_app


@pytest.fixture(scope="module")
def backend():
    return Backend(ServeConfig(model="kvfp-tiny", scheme="none", attn="eager"))


@pytest.fixture(scope="module")
def client(backend):
    return TestClient(make_app(backend))


def post(client, path, **body):
    return client.post(path, json={"model": "kvfp-tiny", **body})


def test_models_names_the_scheme_unless_hidden(client, backend):
    card = client.get("/v1/models").json()["data"][0]
    assert card["id"] == "kvfp-tiny" and card["kvfp"]["scheme"] == "none"
    hidden = TestClient(make_app(_with(backend, hide_scheme=True))).get("/v1/models").json()["data"][0]
    assert "kvfp" not in hidden and hidden["id"] == "kvfp-tiny"


def _with(backend, **changes):
    from dataclasses import replace

    clone = object.__new__(Backend)
    clone.__dict__.update(backend.__dict__)
    clone.config = replace(backend.config, **changes)
    return clone


@pytest.mark.parametrize("body, status, param", [
    ({"prompt": "x", "temperature": 0.7}, 400, "temperature"),
    ({"prompt": "x", "foo": 1}, 400, "foo"),
    ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ({"prompt": "x", "stream": True}, 400, "stream"),
    ({"prompt": "x", "n": 2}, 400, "n"),
    ({"prompt": [5, 99999]}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": ["a", "b"]}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": 5000}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "other", "prompt": "x"}, 404, "model"),
])
def test_a_clients_mistake_is_a_4xx_naming_the_field(client, body, status, param):
    r = client.post("/v1/completions", json={"model": "kvfp-tiny", **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_bad_json_and_missing_model(client):
    r = client.post("/v1/completions", content=b'{"prompt": ', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_chat_without_a_template_is_refused_clearly(client):
    r = post(client, "/v1/chat/completions", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert r.status_code == 400 and "chat template" in r.json()["error"]["message"]
    r = post(client, "/v1/chat/completions", messages=[{"role": "wizard", "content": "hi"}])
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")


def test_none_is_served_as_plain_transformers_computes_it(client, backend):
    """The reference for `none` is transformers itself: one full forward over prompt + output."""
    prompt = [0, 812, 95, 4051, 33, 7, 250, 1999, 64, 3]
    r = post(client, "/v1/completions", prompt=prompt, max_tokens=6, logprobs=5, ignore_eos=True,
             return_tokens_as_token_ids=True)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    out = [int(t.split(":")[1]) for t in lp["tokens"]]
    model = backend.model
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out])).logits[0].float()
    ref = torch.log_softmax(logits, -1)[len(prompt) - 1:-1]  # the prediction of each output token
    assert out == ref.argmax(-1).tolist()  # greedy
    for t, row in enumerate(lp["top_logprobs"]):
        assert len(row) == 5
        for key, v in row.items():
            assert math.isclose(v, ref[t, int(key.split(":")[1])].item(), abs_tol=2e-4)
        assert math.isclose(lp["token_logprobs"][t], ref[t, out[t]].item(), abs_tol=2e-4)


def test_echo_and_prompt_logprobs_shapes(client):
    r = post(client, "/v1/completions", prompt="def f(x):\n    return", max_tokens=3, logprobs=2, echo=True,
             ignore_eos=True)
    body = r.json()
    ch = body["choices"][0]
    n = body["usage"]["prompt_tokens"]
    lp = ch["logprobs"]
    assert len(lp["tokens"]) == n + 3 and lp["token_logprobs"][0] is None
    assert all(v is not None for v in lp["token_logprobs"][1:])
    assert lp["top_logprobs"][:n] == [None] * n and all(len(x) == 2 for x in lp["top_logprobs"][n:])
    assert ch["text"][lp["text_offset"][n]:] == "".join(lp["tokens"][n:])
    r = post(client, "/v1/completions", prompt=[0, 5, 6, 7], max_tokens=2, logprobs=1, prompt_logprobs=1)
    plp = r.json()["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and [list(e) for e in plp[1:]] == [["5"], ["6"], ["7"]]


def test_end_of_sequence_stops_unless_ignored(backend):
    full = backend.complete([0, 812, 95], 6, 1, False, ignore_eos=True)
    assert full.finish_reason == "length" and len(full.output_ids) == 6
    # make the fourth generated token the end-of-sequence id, so the cut is certain to be exercised
    stopper = _with(backend)
    stopper.eos_ids = {full.output_ids[3]}
    first = full.output_ids.index(full.output_ids[3])
    r = post(TestClient(make_app(stopper)), "/v1/completions", prompt=[0, 812, 95], max_tokens=6, logprobs=1,
             return_tokens_as_token_ids=True)
    ch = r.json()["choices"][0]
    assert ch["finish_reason"] == "stop" and len(ch["logprobs"]["tokens"]) == first  # eos itself not returned
    assert r.json()["usage"]["completion_tokens"] == first
