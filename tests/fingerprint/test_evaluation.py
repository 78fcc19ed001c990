"""``kvfp evaluate`` end to end on kvfp-tiny with a hand-made tiny protocol, the work folder's
reuse and refusals, prefix replays, and the command's help."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from kvfp.cli.app import app
from kvfp.errors import KvfpError
from kvfp.fingerprint.evaluation import Protocol, run
from kvfp.fingerprint.evaluation.protocol import collect_specs
from kvfp.fingerprint.evaluation.report import COLUMNS, table, to_json
from kvfp.fingerprint.evaluation.truncate import truncate_observation, truncate_reference
from kvfp.fingerprint.observation import TIERS
from kvfp.probes import Probe, ProbeSuite, tokenizer_hash, write_suite

SCHEMES = ("none", "int2-pertoken", "fp8-e4m3", "window-64")
CANDIDATES = ("none", "int2-pertoken")
LENGTH, NEW = 128, 4


def suite_file(path, tok, heldout_ids, offset, n):
    probes = []
    for i in range(n):
        start = offset + i * LENGTH
        ids = [tok.bos_token_id] + heldout_ids[start:start + LENGTH - 1].tolist()
        probes.append(Probe(id=f"plain-{LENGTH}-o{start}", family="plain", seed=0, n_tokens=LENGTH, ids=ids))
    return str(write_suite(path, ProbeSuite(probes, header={"suite": "test", "tokenizer_hash": tokenizer_hash(tok)})))


@pytest.fixture(scope="module")
def protocol(tiny, heldout_ids, tmp_path_factory):
    _, tok = tiny
    d = tmp_path_factory.mktemp("suites")
    return Protocol(model="kvfp-tiny", mode="test", train_probes=suite_file(d / "train.jsonl", tok, heldout_ids, 0, 3),
                    test_probes=suite_file(d / "test.jsonl", tok, heldout_ids, 6000, 2), schemes=SCHEMES,
                    new_tokens=NEW, candidates=CANDIDATES, pools=(1, 2, 4, 8), n_boot=200)


@pytest.fixture(scope="module")
def evaluated(protocol, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("KVFP_CACHE", str(cache))
    work = tmp_path_factory.mktemp("eval") / "work"
    try:
        yield work, run(protocol, work)
    finally:
        mp.undo()


@pytest.mark.slow
def test_every_figure_of_every_tier_is_in_range(evaluated, protocol):
    work, r = evaluated
    assert list(r["tiers"]) == list(TIERS)
    specs = collect_specs(protocol, work, list(SCHEMES), None)
    n_train = sum(len(specs[d].schemes) for d in ("train-reference", "train-nuisance")) * 3
    # every scheme on both train sides: the served copies keep the classifier off exact fits
    assert len(specs["train-reference"].schemes) == 4
    assert specs["train-nuisance"].schemes == specs["train-reference"].schemes
    counts = dict(r["counts"])
    assert 0 <= counts.pop("lookalike_observations") <= 4 * 2
    assert counts == {"train_observations": n_train, "test_observations": 4 * 2, "train_probes": 3,
                      "test_probes": 2, "schemes": 4, "candidates": 2}
    for tier, f in r["tiers"].items():
        for key in ("scheme_accuracy", "gene_accuracy", "macro_f1", "false_alarm_rate", "verdict_accuracy",
                    "open_set_auroc"):
            assert 0.0 <= f[key] <= 1.0, (tier, key, f[key])
        # merging look-alikes can only forgive predictions, never add errors
        assert f["scheme_accuracy"] <= f["scheme_accuracy_lookalike"] <= 1.0
        assert f["endpoints"] == 4 and 0.0 <= f["endpoint_accuracy"] <= f["endpoint_accuracy_lookalike"] <= 1.0
        assert len(f["endpoint_misses"]) == round((1 - f["endpoint_accuracy"]) * 4)
        assert f["null_observations"] == 2 and 0 <= f["false_alarms"] <= 2
        assert f["false_alarm_rate"] == f["false_alarms"] / 2
        assert set(f["open_set_auroc_per_scheme"]) == set(SCHEMES) - {"none"}
        assert f["open_set_auroc"] == pytest.approx(np.mean(list(f["open_set_auroc_per_scheme"].values())))
        tok = f["tokens_to_separate"]
        assert tok["pair"] == ["fp8-e4m3", "none"] and 0.0 <= tok["auroc"] <= 1.0
        # t in 1, 2, 4 and m in 1, 2, 4, 8; the prompt tier also counts the 127 scored prompt tokens
        per_obs = {t: t + (LENGTH - 1 if tier == "prompt" else 0) for t in (1, 2, 4)}
        want = sorted(m * per_obs[t] for t in per_obs for m in (1, 2, 4, 8))
        assert sorted(p["tokens"] for p in tok["curve"]) == want
        if tok["reached"]:
            cheapest = min(p["tokens"] for p in tok["curve"] if p["auroc"] >= 0.99)
            assert tok["auroc"] >= 0.99 and tok["tokens"] == cheapest
        else:
            assert tok["tokens"] == 8 * per_obs[4]


@pytest.mark.slow
def test_json_and_table_carry_every_figure(evaluated):
    _, r = evaluated
    out = json.loads(to_json(r))
    assert out["targets"]["logits"]["scheme_accuracy"]["target"] == ">= 0.99"
    assert set(out["targets"]["tokens"]) == {"gene_accuracy", "false_alarm_rate", "tokens_to_separate"}
    for tier in TIERS:
        assert all(key in out["tiers"][tier] for key, _ in COLUMNS)
    t = table(r)
    assert t.row_count == len(TIERS) and len(t.columns) == 1 + len(COLUMNS)


@pytest.mark.slow
def test_a_rerun_reuses_the_folder_and_gives_the_same_figures(evaluated, protocol):
    work, first = evaluated
    again = run(protocol, work)
    assert again["tiers"] == first["tiers"]
    assert again["seconds"]["collect"] < first["seconds"]["collect"]


@pytest.mark.slow
def test_a_folder_of_another_configuration_is_refused(evaluated, protocol, tmp_path):
    from dataclasses import replace

    work, _ = evaluated
    with pytest.raises(KvfpError, match="new_tokens: 4 there, 5 now") as e:
        run(replace(protocol, new_tokens=5), work)
    assert e.value.exit_code == 2
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(KvfpError, match="not a kvfp evaluate folder"):
        run(protocol, other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_prefix_replay_is_the_prefix_of_a_replay(tiny_eager, heldout_ids, tmp_path):
    # what the tokens-needed figure relies on, for an eviction that bites within the replay
    from kvfp.compressors import parse_scheme
    from kvfp.fingerprint.observation import from_trace
    from kvfp.fingerprint.reference import ReferenceRunner
    from kvfp.runner import generate

    model, tok = tiny_eager
    prompt = [tok.bos_token_id] + heldout_ids[100:147].tolist()
    obs = from_trace(generate(model, parse_scheme("window-40"), [prompt], 6, logits=True)[0])
    runner = ReferenceRunner(model, ["none", "window-40", "int2-pertoken"], cache_dir=None)
    cut = truncate_reference(runner.reference(obs), 3)
    direct = runner.reference(truncate_observation(obs, 3))
    assert cut.output_ids == direct.output_ids == obs.output_ids[:3]
    for name in ["none", "window-40", "int2-pertoken"]:
        np.testing.assert_allclose(cut.candidates[name].logits, direct.candidates[name].logits, atol=1e-4)
    np.testing.assert_allclose(cut.noise.logits, direct.noise.logits, atol=1e-2)
    o3 = truncate_observation(obs, 3)
    assert o3.logits.shape == (3, obs.logits.shape[1]) and len(o3.topk_ids) == 3 == len(o3.token_logprobs)
    assert o3.prompt_logprobs == obs.prompt_logprobs


cli = CliRunner()


def test_help_states_the_protocol():
    r = cli.invoke(app, ["evaluate", "--help"])
    assert r.exit_code == 0, r.output
    for word in ("--quick", "--json", "--work", "--candidates", "seed 0", "seed 1", "bfloat16"):
        assert word in r.output


def test_cli_refuses_a_bad_candidate_without_traceback(tmp_path):
    r = cli.invoke(app, ["evaluate", "--model", "kvfp-tiny", "--quick", "--candidates", "int5-nonsense",
                         "--work", str(tmp_path / "w")])
    assert r.exit_code == 2 and "Traceback" not in r.output and "int5-nonsense" in r.output
    assert not (tmp_path / "w").exists()
