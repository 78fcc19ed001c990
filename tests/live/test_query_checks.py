"""What `kvfp query` refuses to log: each defect a server can commit, named."""

import pytest

from kvfp.query.log import QueryLog
from kvfp.query.shapes import BadResponse, check_chat, check_completion
from kvfp.query.spec import QuerySpec

SPEC = QuerySpec(url="http://127.0.0.1:1", model_name="m", out=None, top_logprobs=3, max_tokens=2)


def completion(tokens=("a", "b"), tops=None, finish="length", model="m", lps=None, usage=None):
    tops = tops if tops is not None else [{"a": -0.1, "x": -2.0, "y": -3.0}, {"b": -0.2, "x": -2.5, "z": -4.0}]
    body = {"model": model, "choices": [{"text": "".join(tokens), "finish_reason": finish, "logprobs": {
        "tokens": list(tokens), "token_logprobs": lps or [-0.1, -0.2][:len(tokens)], "top_logprobs": tops}}]}
    if usage:
        body["usage"] = usage
    return body


def chat(rows=(3, 3), finish="length"):
    content = [{"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "a", "logprob": -0.1}] * n} for n in rows]
    return {"model": "m", "choices": [{"finish_reason": finish, "logprobs": {"content": content}}]}


def test_a_good_response_passes_and_reports_what_it_saw():
    seen = check_completion(SPEC, completion(), echo=False)
    assert seen.steps == 2 and seen.max_entries == 3 and seen.short_steps == 0
    # a string-keyed list that lost an entry at one step is partial evidence, not a defect
    seen = check_completion(SPEC, completion(tops=[{"a": -0.1, "x": -2.0}, {"b": -0.2, "x": -2.5, "z": -4}]), False)
    assert seen.short_steps == 1


@pytest.mark.parametrize("resp, message", [
    (completion(model="other"), "from model 'other'"),
    ({"model": "m", "choices": [{"text": "ab", "finish_reason": "length", "logprobs": None}]}, "logprobs"),
    (completion(tokens=("a",), tops=[{"a": -0.1, "x": -2.0, "y": -3.0}]), "cut short"),
    (completion(tops=[{"a": -0.1}, {"b": -0.2}]), "--top-logprobs 1"),
    (completion(tops=[{"a": -0.1, "x": -2.0, "y": -3.0}]), "differ in length"),
    (completion(lps=[-0.1, None]), "not a number"),
    ({"model": "m", "choices": []}, "one choice"),
])
def test_defects_are_refused_with_a_reason(resp, message):
    with pytest.raises(BadResponse, match=message.replace("(", r"\(").replace("-", r"\-")):
        check_completion(SPEC, resp, echo=False)


def test_an_early_stop_is_fine_when_the_server_says_so():
    seen = check_completion(SPEC, completion(tokens=("a",), tops=[{"a": -0.1, "x": -2.0, "y": -3.0}],
                                             finish="stop"), echo=False)
    assert seen.steps == 1


def test_echo_needs_a_usage_count_to_split_prompt_from_output():
    with pytest.raises(BadResponse, match="usage.prompt_tokens"):
        check_completion(SPEC, completion(), echo=True)


def test_chat_lists_cannot_lose_entries():
    assert check_chat(SPEC, chat()).steps == 2
    with pytest.raises(BadResponse, match="truncated"):
        check_chat(SPEC, chat(rows=(3, 2)))
    with pytest.raises(BadResponse, match="--top-logprobs 2"):
        check_chat(SPEC, chat(rows=(2, 2)))


def test_a_log_of_other_settings_or_another_suite_is_not_resumed(tmp_path):
    log = QueryLog(tmp_path / "l.jsonl", {"top_logprobs": 20}, "suite-a")
    log.open()
    log.append({"id": "x", "kvfp": {"probe_id": "p1", "suite_hash": "suite-a", "query": {"top_logprobs": 20}}})
    log.close()
    again = QueryLog(tmp_path / "l.jsonl", {"top_logprobs": 20}, "suite-a")
    again.open()
    assert again.answered == {"p1"}
    again.close()
    from kvfp.errors import KvfpError

    with pytest.raises(KvfpError, match="other settings \\(top_logprobs\\)"):
        QueryLog(tmp_path / "l.jsonl", {"top_logprobs": 5}, "suite-a").open()
    with pytest.raises(KvfpError, match="another probe suite"):
        QueryLog(tmp_path / "l.jsonl", {"top_logprobs": 20}, "suite-b").open()
    (tmp_path / "foreign.jsonl").write_text('{"choices": []}\n')
    with pytest.raises(KvfpError, match="not a kvfp query log line"):
        QueryLog(tmp_path / "foreign.jsonl", {}, "s").open()


def test_chat_against_a_model_without_a_template_is_refused_before_sending(tmp_path, tiny):
    from typer.testing import CliRunner

    from kvfp.cli.app import app

    r = CliRunner().invoke(app, ["query", "--url", "http://127.0.0.1:9", "--model-name", "kvfp-tiny", "--api", "chat",
                                 "--probes", "quick", "--out", str(tmp_path / "l.jsonl")])
    assert r.exit_code == 2 and "no chat" in r.output and "template" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "l.jsonl").exists()
