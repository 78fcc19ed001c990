"""Bad logs: every defect is a KvfpError whose message names the file, the line and the field.

Each case edits one line of a hand-written sample and checks the message; a sweep then breaks
every field of every sample line in several ways and checks that nothing but KvfpError escapes.
"""

import copy
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kvfp.cli.errors import user_errors
from kvfp.errors import KvfpError
from kvfp.fingerprint.readers import load_observations, read_log

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str, n: int = 0) -> dict:
    lines = [ln for ln in (SAMPLES / f"{name}.jsonl").read_text().splitlines() if ln.strip()]
    return json.loads(lines[n])


def write(tmp_path: Path, *lines) -> Path:
    path = tmp_path / "log.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def edited(name: str, edit, n: int = 0) -> dict:
    rec = copy.deepcopy(sample(name, n))
    edit(rec)
    return rec


def lp(rec):
    return rec["choices"][0]["logprobs"]


def chat_content(rec):
    return rec["choices"][0]["logprobs"]["content"]


# (case, lines of the log (records or raw text), expected message after "log.jsonl:")
CASES = [
    ("malformed json", [sample("completions"), '{"id": "cmpl-2", "choices": [}'], r"2: not valid JSON"),
    ("not an object", ["[1, 2, 3]"], r"1: expected a JSON object, found list"),
    ("unknown shape", [{"foo": 1, "bar": 2}], r"1: not a known log format \(top-level keys: bar, foo\)"),
    ("mixed formats", [sample("completions"), sample("chat")],
     r"2: this line is openai-chat but the file began as openai-completions \(line 1\)"),
    ("missing choices", [edited("completions", lambda r: r.update(choices=None))], r"1: choices: is null"),
    ("empty choices", [{"object": "text_completion", "choices": []}], r"1: choices: is empty"),
    ("missing tokens", [edited("completions", lambda r: lp(r).pop("tokens"))],
     r"1: choices\[0\].logprobs.tokens: missing field"),
    ("token not a string", [edited("completions", lambda r: lp(r)["tokens"].__setitem__(1, 7))],
     r"1: choices\[0\].logprobs.tokens\[1\]: expected a string, found a number"),
    ("NaN logprob", ['{"object": "text_completion", "choices": [{"text": " the", "logprobs": {"tokens": [" the"], '
                     '"token_logprobs": [NaN]}}], "kvfp": {"prompt_ids": [0]}}'],
     r"1: choices\[0\].logprobs.token_logprobs\[0\]: nan is not a finite number"),
    ("Infinity in top-k", ['{"object": "text_completion", "choices": [{"text": " the", "logprobs": '
                           '{"tokens": [" the"], "top_logprobs": [{" the": -Infinity}]}}], '
                           '"kvfp": {"prompt_ids": [0]}}'],
     r"1: choices\[0\].logprobs.top_logprobs\[0\]\[' the'\]: -inf is not a finite number"),
    ("positive logprob", [edited("completions", lambda r: lp(r)["token_logprobs"].__setitem__(2, 0.5))],
     r"1: choices\[0\].logprobs.token_logprobs\[2\]: logprob 0.5 > 0"),
    ("null inside token_logprobs", [edited("completions", lambda r: lp(r)["token_logprobs"].__setitem__(1, None))],
     r"1: choices\[0\].logprobs.token_logprobs\[1\]: expected a number, found null"),
    ("null top-k step", [edited("completions", lambda r: lp(r)["top_logprobs"].__setitem__(4, None))],
     r"1: choices\[0\].logprobs.top_logprobs\[4\]: expected an object, found null"),
    ("lengths disagree", [edited("completions", lambda r: lp(r)["token_logprobs"].pop())],
     r"1: choices\[0\].logprobs.token_logprobs: has 4 entries but choices\[0\].logprobs.tokens has 5"),
    ("top-k lengths disagree", [edited("completions", lambda r: lp(r)["top_logprobs"].append({}))],
     r"1: choices\[0\].logprobs.top_logprobs: has 6 entries but choices\[0\].logprobs.tokens has 5"),
    ("truncated top-k", [sample("completions"), edited("completions", lambda r: lp(r)["top_logprobs"][4].pop(" the"))],
     r"2: choices\[0\].logprobs.top_logprobs\[4\]: has 1 entry where the rest of the log has k=2 \(truncated top-k\)"),
    ("truncated chat top-k", [edited("chat", lambda r: chat_content(r)[0]["top_logprobs"].pop())],
     r"1: choices\[0\].logprobs.content\[0\].top_logprobs: has 1 entry where the rest of the log has k=2"),
    ("prompt_logprobs first not null",
     [edited("completions", lambda r: r["choices"][0]["prompt_logprobs"].__setitem__(0, {"0": -1.0}))],
     r"1: choices\[0\].prompt_logprobs\[0\]: must be null"),
    ("prompt_logprobs miss the prompt token",
     [edited("completions", lambda r: r["choices"][0]["prompt_logprobs"][2].pop("476"))],
     r"1: choices\[0\].prompt_logprobs\[2\]: has no entry for prompt token 476 at position 2"),
    ("prompt_logprobs of another prompt", [edited("completions", lambda r: r["kvfp"].update(prompt_ids=[0, 341]))],
     r"1: choices\[0\].prompt_logprobs: has 3 entries but the prompt has 2 tokens"),
    ("prompt_logprobs key not an id",
     [edited("chat", lambda r: r["prompt_logprobs"][1].update({"the": {"logprob": -1.0}}))],
     r"1: prompt_logprobs\[1\]: key 'the' is not a token id"),
    ("prompt_logprobs NaN",
     ['{"object": "chat.completion", "choices": [{"message": {"content": "hi"}}], "kvfp": {"prompt_ids": [0, 5]}, '
      '"prompt_logprobs": [null, {"5": {"logprob": NaN}}]}'],
     r"1: prompt_logprobs\[1\]\['5'\].logprob: nan is not a finite number"),
    ("no prompt", [edited("completions", lambda r: r.pop("kvfp"))],
     r"1: no prompt: the line has neither kvfp.prompt_ids nor kvfp.probe_id .*; pass --probes SUITE or include "
     r"kvfp.prompt_ids"),
    ("kvfp not an object", [edited("completions", lambda r: r.update(kvfp="plain-s0"))],
     r"1: kvfp: expected an object, found a string"),
    ("prompt id out of range", [edited("text", lambda r: r.update(kvfp={"prompt_ids": [0, 10**6]}))],
     r"1: kvfp.prompt_ids\[1\]: token id 1000000 is outside the tokenizer's \d+ ids"),
    ("unknown probe", [edited("text", lambda r: r["kvfp"].update(probe_id="needle-9"))],
     r"1: kvfp.probe_id: probe 'needle-9' is not in the probe suite given \(2 probes\)"),
    ("another suite", [edited("text", lambda r: r["kvfp"].update(suite_hash="ab" * 32))],
     r"1: kvfp.suite_hash: abababababab… is not the hash of the probe suite given"),
    ("prompt ids contradict the probe", [edited("chat", lambda r: r["kvfp"].update(prompt_ids=[0, 341, 476, 16]))],
     r"1: kvfp.prompt_ids: differ from the ids of probe 'plain-s0' in the suite given"),
    ("chat logprob missing", [edited("chat", lambda r: chat_content(r)[1].pop("logprob"))],
     r"1: choices\[0\].logprobs.content\[1\].logprob: missing field"),
    ("chat bytes not bytes", [edited("chat", lambda r: chat_content(r)[1].update(bytes=[300]))],
     r"1: choices\[0\].logprobs.content\[1\].bytes: \[300\] are not all bytes"),
    ("chat bytes of no token", [edited("chat", lambda r: chat_content(r)[2].update(bytes=list(b" zzqxzzqx")))],
     r"1: choices\[0\].logprobs.content\[2\].bytes: token bytes \[32, 122, .*\] is not in the tokenizer's vocabulary"),
    ("chat top-k id twice",
     [edited("chat", lambda r: chat_content(r)[0]["top_logprobs"][0].update(bytes=[32, 116, 104, 101]))],
     r"1: choices\[0\].logprobs.content\[0\].top_logprobs\[\d\].bytes: token id \d+ appears twice in one top-k list"),
    ("chat without message", [edited("chat", lambda r: r["choices"][0].pop("message"))],
     r"1: choices\[0\].message: missing field"),
    ("text not a string", [{"text": ["a"], "kvfp": {"prompt_ids": [0]}}], r"1: text: expected a string, found a list"),
    ("kvfp-jsonl format", [edited("kvfp", lambda r: r.update(format=2))], r"1: format: trace format 2 is not one"),
    ("kvfp-jsonl output id", [edited("kvfp", lambda r: r["output_ids"].__setitem__(0, -1))],
     r"1: output_ids\[0\]: token id -1 is outside the tokenizer's"),
    ("kvfp-jsonl steps", [edited("kvfp", lambda r: r["topk_ids"].pop())],
     r"1: topk_ids: has 2 entries but output_ids has 3"),
    ("kvfp-jsonl top-k shape", [edited("kvfp", lambda r: r["topk_logprobs"][1].pop())],
     r"1: topk_logprobs\[1\]: has 1 entries but topk_ids\[1\] has 2"),
    ("kvfp-jsonl aligned prompt logprobs", [edited("kvfp", lambda r: r["prompt_logprobs"].__setitem__(0, -1.0))],
     r"1: prompt_logprobs\[0\]: must be null"),
    ("kvfp-jsonl logits rows", [edited("kvfp", lambda r: r.update(logits=[[0.0] * 5] * 2))],
     r"1: logits: has 2 rows but output_ids has 3 steps"),
    ("kvfp-jsonl logits width", [edited("kvfp", lambda r: r.update(logits=[[0.0] * 5] * 3))],
     r"1: logits: rows have 5 entries, fewer than the tokenizer's \d+ ids"),
    ("nested too deeply", [sample("completions"), "[" * 100_000], r"2: JSON nested too deeply"),
    ("kvfp-jsonl chosen logprob vs its top-k entry", [edited("kvfp", lambda r: r.update(token_logprobs=[0.0] * 3))],
     r"1: topk_ids\[0\]\[0\]: step 0: the chosen token \(id 341\) has logprob -0.5 here but 0.0 as the generated"),
    ("chat chosen logprob vs its top-k entry", [edited("chat", lambda r: chat_content(r)[0].update(logprob=-0.252))],
     r"1: choices\[0\].logprobs.content\[0\].top_logprobs\[1\].bytes: step 0: the chosen token \(id \d+\) has "
     r"logprob -0.25 here but -0.252"),
]


@pytest.mark.parametrize("lines, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_log(tmp_path, tok, suite, lines, expected):
    path = write(tmp_path, *lines)
    with pytest.raises(KvfpError) as e:
        read_log(path, tok, suite=suite)
    assert e.value.exit_code == 1
    msg = str(e.value)
    assert msg.startswith(f"{path}:"), msg
    assert re.match(expected, msg[len(f"{path}:"):]), msg


def test_logits_must_be_finite(tmp_path, tok):
    rec = sample("kvfp")
    steps = len(rec["output_ids"])
    rows = ", ".join("[" + ", ".join("NaN" if (t, i) == (1, 7) else "0.0" for i in range(len(tok))) + "]"
                     for t in range(steps))
    text = json.dumps(rec)[:-1] + f', "logits": [{rows}]}}'
    path = write(tmp_path, text)
    with pytest.raises(KvfpError, match=r"log.jsonl:1: logits\[1\]\[7\]: nan is not a finite number"):
        read_log(path, tok)


def test_logits_are_read_as_float32(tmp_path, tok):
    rec = sample("kvfp")
    rec["logits"] = [[float(t + i % 3) for i in range(len(tok))] for t in range(len(rec["output_ids"]))]
    (obs, _) = read_log(write(tmp_path, rec, sample("kvfp", 1)), tok)
    assert obs.logits.dtype.name == "float32" and obs.logits.shape == (len(rec["output_ids"]), len(tok))
    assert obs.logits[2, 4] == 2 + 4 % 3 and "logits" in obs.tiers()


def test_empty_file(tmp_path, tok):
    for body in ("", "\n  \n\n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(body)
        with pytest.raises(KvfpError, match=r"empty.jsonl: empty file"):
            read_log(path, tok)


def test_not_utf8(tmp_path, tok):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps(sample("text", 1)).encode() + b"\n\xff\xfe\n")
    with pytest.raises(KvfpError, match=r"bin.jsonl:2: not UTF-8 text"):
        read_log(path, tok)


def test_chosen_logprob_within_float32_rounding_of_its_entry_is_read(tmp_path, tok, suite):
    rec = edited("chat", lambda r: chat_content(r)[0].update(logprob=-0.25 - 4e-4))
    assert read_log(write(tmp_path, rec), tok, suite=suite)[0].token_logprobs[0] == -0.25 - 4e-4


def test_a_response_longer_than_the_model_is_refused(tmp_path, tok):
    rec = sample("kvfp")  # 4 prompt and 3 output tokens
    path = write(tmp_path, sample("kvfp", 1), rec)
    assert len(read_log(path, tok, max_positions=7)) == 2
    with pytest.raises(KvfpError, match=r"log.jsonl:2: prompt \(4 tokens\) and output \(3 tokens\) make 7, more "
                                        r"than the model's 6 positions"):
        read_log(path, tok, max_positions=6)


def test_a_folder_is_not_a_log(tmp_path, tok):
    with pytest.raises(KvfpError, match="is a folder") as e:
        read_log(tmp_path, tok)
    assert e.value.exit_code == 2


def test_missing_file(tmp_path, tok):
    with pytest.raises(KvfpError, match="nothere.jsonl not found") as e:
        read_log(tmp_path / "nothere.jsonl", tok)
    assert e.value.exit_code == 2


def test_cli_prints_the_message_without_a_traceback(tmp_path, tok):
    """What the identify command will do: the error, its exit code, no traceback."""
    path = write(tmp_path, sample("completions"), '{"id": "cmpl-2", "choices": [}')
    app = typer.Typer()

    @app.command()
    @user_errors
    def identify(log: Path):
        load_observations(log, tok)

    r = CliRunner().invoke(app, [str(path)])
    assert r.exit_code == 1
    assert "log.jsonl:2: not valid JSON" in r.output and "Traceback" not in r.output


def _leaves(obj, path=()):
    """Every (path, value) in a JSON value, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))


def _broken(rec, path, how):
    rec = copy.deepcopy(rec)
    parent = rec
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if how == "delete":
        del parent[key]
    else:
        parent[key] = {"null": None, "string": "x", "nan": float("nan"), "list": [], "object": {}, "big": 10**9,
                       "positive": 3.5}[how]
    return rec


@pytest.mark.parametrize("name", ["completions", "chat", "kvfp", "text"])
def test_any_broken_field_is_a_kvfp_error_or_read(tmp_path, tok, suite, name):
    """No defect lets another exception through (a traceback for the user)."""
    lines = [ln for ln in (SAMPLES / f"{name}.jsonl").read_text().splitlines() if ln.strip()]
    path = tmp_path / "log.jsonl"
    tried = 0
    for n, text in enumerate(lines):
        rec = json.loads(text)
        for where, _ in list(_leaves(rec))[1:]:
            for how in ("delete", "null", "string", "nan", "list", "object", "big", "positive"):
                bad = _broken(rec, where, how)
                path.write_text("\n".join(lines[:n] + [json.dumps(bad)] + lines[n + 1:]) + "\n")
                tried += 1
                try:
                    read_log(path, tok, suite=suite)
                except KvfpError as e:
                    assert str(e).startswith(f"{path}"), (where, how, str(e))
    assert tried > 50
