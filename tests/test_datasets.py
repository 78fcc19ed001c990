"""The dataset store: Parquet shards round-trip traces exactly; a bad folder is refused by name."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from kvfp.collect import CollectSpec, collect
from kvfp.datasets import open_dataset
from kvfp.datasets.shards import table_to_traces, traces_to_table
from kvfp.errors import KvfpError
from kvfp.probes import Probe, ProbeSuite, tokenizer_hash, write_suite
from kvfp.runner.trace import Trace


def tiny_suite(tok, heldout_ids, lengths=(64, 80, 96), offset=0) -> ProbeSuite:
    """Plain probes cut from the held-out token stream (BOS + n-1 tokens each)."""
    probes = []
    for i, n in enumerate(lengths):
        ids = [tok.bos_token_id] + heldout_ids[offset:offset + n - 1].tolist()
        probes.append(Probe(id=f"plain-{n}-{i}", family="plain", seed=0, n_tokens=n, ids=ids))
        offset += n
    return ProbeSuite(probes, header={"suite": "test", "tokenizer_hash": tokenizer_hash(tok)})


def assert_same_traces(a: list[Trace], b: list[Trace]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.prompt_ids == y.prompt_ids and x.output_ids == y.output_ids and x.mode == y.mode
        assert x.token_logprobs == y.token_logprobs
        assert x.topk_ids == y.topk_ids and x.topk_logprobs == y.topk_logprobs
        assert x.prompt_logprobs == y.prompt_logprobs
        assert x.meta == y.meta
        assert (x.logits is None) == (y.logits is None)
        if x.logits is not None:
            assert x.logits.dtype == y.logits.dtype and np.array_equal(x.logits, y.logits)


@pytest.fixture(scope="module")
def dataset_dir(tiny, heldout_ids, tmp_path_factory):
    _, tok = tiny
    root = tmp_path_factory.mktemp("ds")
    suite_path = write_suite(root / "suite.jsonl", tiny_suite(tok, heldout_ids))
    spec = CollectSpec(model="kvfp-tiny", schemes=("none", "int4-pertoken"), out=root / "data",
                       probes=str(suite_path), new_tokens=4, topk=5, logits=True, shard_size=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(root / "cache"))
        collect(spec, show_progress=False)
    return root / "data"


def _copy(dataset_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset_dir, dst)
    return dst


def test_shard_table_round_trips_traces_exactly(tiny, heldout_ids):
    from kvfp.compressors import parse_scheme
    from kvfp.runner import generate

    model, tok = tiny
    suite = tiny_suite(tok, heldout_ids, lengths=(40, 50))
    traces = generate(model, parse_scheme("int8-pertoken"), [p.ids for p in suite.probes], 3, topk=4, logits=True)
    traces[1].logits = None  # a shard may mix rows with and without logits
    traces[1].prompt_logprobs = None
    back = table_to_traces(traces_to_table(traces, [p.id for p in suite.probes], "int8-pertoken"))
    assert_same_traces(traces, back)
    assert back[0].prompt_logprobs[0] is None and len(back[0].prompt_logprobs) == 40


def test_float32_storage_refuses_values_it_would_round(tiny, heldout_ids):
    tr = Trace(prompt_ids=[0, 5], output_ids=[7], token_logprobs=[-0.1], topk_ids=[[7]], topk_logprobs=[[-0.1]])
    with pytest.raises(ValueError, match="float32"):
        traces_to_table([tr], ["p"], "none")


def test_open_dataset_reads_manifest_probes_and_traces(dataset_dir, tiny):
    _, tok = tiny
    ds = open_dataset(dataset_dir)
    assert ds.schemes == ["none", "int4-pertoken"] and ds.complete
    m = ds.manifest
    assert m["kind"] == "kvfp-dataset" and m["model"]["id"] == "kvfp-tiny"
    assert m["model"]["tokenizer_hash"] == tokenizer_hash(tok)
    assert m["probes"]["suite_hash"] == ds.probes.hash and len(ds.probes) == 3
    assert m["shards"] == {"size": 2, "count": 2, "layout": "shards/<scheme>/shard-<index>.parquet"}
    assert m["settings"]["padding"] == "left" and m["settings"]["logits"] is True
    assert {"kvfp", "torch", "transformers", "python"} <= set(m["versions"])
    genes = {s["name"]: s["gene"] for s in m["schemes"]}
    assert genes["int4-pertoken"]["algorithm"] == "quantization"
    traces = list(ds.traces("int4-pertoken"))
    assert [t.meta["probe"]["id"] for t in traces] == [p.id for p in ds.probes.probes]
    assert [t.prompt_ids for t in traces] == [p.ids for p in ds.probes.probes]
    t = traces[0]
    assert t.meta["scheme"] == "int4-pertoken" and t.meta["nuisance"]["batch_size"] == 1
    assert t.logits.shape == (4, 8192) and len(t.topk_ids[0]) == 5
    # the stored logprobs are those of the stored logits
    lp = t.logits.astype(np.float64) - np.log(np.exp(t.logits.astype(np.float64)).sum(-1, keepdims=True))
    np.testing.assert_allclose(t.token_logprobs, lp[np.arange(4), t.output_ids], atol=1e-4)
    assert len(list(ds.traces())) == 6


def test_to_pandas_has_one_row_per_trace(dataset_dir):
    import pandas as pd

    shard = pd.read_parquet(dataset_dir / "shards" / "none" / "shard-00000.parquet")  # plain Parquet
    assert list(shard["probe_id"]) == ["plain-64-0", "plain-80-1"]
    df = open_dataset(dataset_dir).to_pandas()
    assert len(df) == 6 and list(df["scheme"].unique()) == ["none", "int4-pertoken"]
    row = df.iloc[0]
    assert len(row["logits"]) == 4 * 8192 and json.loads(row["meta"])["scheme"] == "none"
    assert list(row["prompt_ids"]) == open_dataset(dataset_dir).probes.probes[0].ids


def test_missing_manifest_is_refused(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    (d / "manifest.json").unlink()
    with pytest.raises(KvfpError, match="manifest.json is missing"):
        open_dataset(d)


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "kind": "kvfp-traces"}, "kind is 'kvfp-traces'"),
    (lambda m: {**m, "format": 99}, "format 99"),
    (lambda m: {k: v for k, v in m.items() if k != "settings"}, "missing field.*settings"),
    (lambda m: {**m, "shards": {**m["shards"], "count": 7}}, "do not fit 3 probes"),
    (lambda m: {**m, "probes": {**m["probes"], "suite_hash": "0" * 64}}, "does not match the manifest"),
])
def test_inconsistent_manifest_is_refused_naming_the_file(dataset_dir, tmp_path, edit, message):
    d = _copy(dataset_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps(edit(m)))
    with pytest.raises(KvfpError, match=message) as e:
        open_dataset(d)
    assert str(d) in str(e.value)


def test_manifest_that_is_not_json_is_refused(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(KvfpError, match="manifest.json: not valid JSON"):
        open_dataset(d)


def test_shard_of_an_unlisted_scheme_is_refused(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    shutil.copytree(d / "shards" / "none", d / "shards" / "int8-pertoken")
    with pytest.raises(KvfpError, match="int8-pertoken.*does not list"):
        open_dataset(d)


def test_unreadable_parquet_is_refused_naming_the_file(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    bad = d / "shards" / "none" / "shard-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(KvfpError, match="shard-00001.parquet: unreadable Parquet"):
        open_dataset(d)


def test_shard_with_other_probes_is_refused_when_read(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    # shard 1 of none holds the third probe; put shard 0's rows (probes 1-2) in its place
    table = pq.read_table(d / "shards" / "none" / "shard-00000.parquet")
    pq.write_table(table, d / "shards" / "none" / "shard-00001.parquet")
    ds = open_dataset(d)
    with pytest.raises(KvfpError, match="shard-00001.parquet: holds probes"):
        list(ds.traces("none"))


def test_edited_probe_suite_is_refused(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    lines = (d / "probes.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    header.pop("suite_hash")
    rec = json.loads(lines[1])
    rec["ids"][3] = (rec["ids"][3] + 1) % 8192
    (d / "probes.jsonl").write_text("\n".join([json.dumps(header), json.dumps(rec), *lines[2:]]) + "\n")
    with pytest.raises(KvfpError, match="probes.jsonl: probe suite hash"):
        open_dataset(d)


def test_incomplete_dataset_lists_missing_units(dataset_dir, tmp_path):
    d = _copy(dataset_dir, tmp_path)
    (d / "shards" / "int4-pertoken" / "shard-00001.parquet").unlink()
    ds = open_dataset(d)
    assert not ds.complete and ds.missing() == [("int4-pertoken", 1)]
    assert len(list(ds.traces("int4-pertoken"))) == 2
