"""A real engine, identified: llama.cpp's KV-cache types named from its top-20 logprobs.

llama.cpp (through ``llama-cpp-python``, built by ``make llama-cpp``; the test suite never needs
it) loads the same GGUF that kvfp converts into ``smollm2-135m`` and answers a held-out probe suite
greedily under each cache setting. Its top-20 logprobs per step (what its OpenAI-compatible server
returns, computed here from the engine's own logits) are written as OpenAI completions logs (top-k
keyed ``token_id:N``, as vLLM's ``return_tokens_as_token_ids`` does) and identified by a classifier
trained **only on kvfp's own simulations** on smollm2-135m: ``kvfp collect --engine llama.cpp``
(kvfp's emulation of llama.cpp's arithmetic, kvfp's own ggml codecs), ``kvfp train``.

It prints (1) how far kvfp's replay is from llama.cpp's own f16 logprobs under each part of the
engine profile, next to how far llama.cpp is from itself with flash attention switched; (2) a
confusion table and, per engine setting, the pooled verdict, its gene and the scored tokens the
verdict needed (the fewest probes, in suite order, from which it stays right).

    python benchmarks/real_engine.py [--work DIR] [--new-tokens 16] [--prompt-len 256] [--more-schemes]
                                     [--train-flash-attn] [--train-seed 0] [--test-seed 1]

The defaults fit about 45 minutes on 2 cores: every training observation is replayed under the
reference, the noise yardstick and every candidate, and each replay of a 30-layer model costs
seconds (the replay-cost issue is what makes the full catalogue affordable).

Everything is cached under ``--work`` (datasets, classifier, engine logs) and replays under
``$KVFP_CACHE``, so a rerun only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "smollm2-135m"
# (K type, V type, flash attention); quantized V needs flash attention in llama.cpp
SETTINGS = {
    "f16": ("f16", "f16", False), "f16-fa": ("f16", "f16", True),
    "q8_0": ("q8_0", "q8_0", True), "q4_0": ("q4_0", "q4_0", True), "q4_1": ("q4_1", "q4_1", True),
    "q5_0": ("q5_0", "q5_0", True), "q5_1": ("q5_1", "q5_1", True), "iq4_nl": ("iq4_nl", "iq4_nl", True),
    "k-q8_0-v-q4_0": ("q8_0", "q4_0", True),
}
# the llama.cpp-relevant schemes (issue 13, "Cost"); fp16 is left out: under the llama.cpp profile
# the f16 cache is the engine's own baseline (`none`), and an f32→f16 rounding of K/V moves the
# logprobs 60 times less than the engine's own arithmetic does, so no log could tell them apart
TRAIN_SCHEMES = ["none", "ggml-q8_0", "ggml-q4_0", "ggml-q4_1", "ggml-q5_0", "ggml-q5_1", "ggml-iq4_nl",
                 "ggml-k-q8_0-v-q4_0"]
# with --more-schemes: the rest of issue 13's list (each adds a replay per observation)
MORE_SCHEMES = ["int8-pertoken", "int4-pertoken", "int4-group32", "fp8-e4m3"]


def expected(setting: str) -> str:
    k, v, _ = SETTINGS[setting]
    if k == "f16" and v == "f16":
        return "none"
    return f"ggml-{k}" if k == v else f"ggml-k-{k}-v-{v}"


def kvfp(*args: str) -> None:
    cmd = [sys.executable, "-m", "kvfp", *args]
    print("$ kvfp " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def need_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed: run `make llama-cpp` (compiles llama.cpp, "
                         "10-35 minutes on 2 cores; pip caches the wheel)") from None
    return llama_cpp


def run_engine(llama_cpp, gguf: Path, setting: str, suite, new_tokens: int, out: Path, threads: int) -> None:
    """Greedy answers of ``suite`` under one cache setting, as an OpenAI completions log."""
    if out.is_file():
        return
    types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0,
             "q4_1": llama_cpp.GGML_TYPE_Q4_1, "q5_0": llama_cpp.GGML_TYPE_Q5_0, "q5_1": llama_cpp.GGML_TYPE_Q5_1,
             "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL}
    k, v, fa = SETTINGS[setting]
    n_ctx = max(p.n_tokens for p in suite.probes) + new_tokens + 8
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, logits_all=True, flash_attn=fa,
                          type_k=types[k], type_v=types[v], n_threads=threads, seed=0, verbose=False)
    lines = []
    for p in suite.probes:
        llm.reset()
        llm.eval(list(p.ids))
        toks, lps, tops = [], [], []
        for step in range(new_tokens):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            lp = logits - logits.max()
            lp = lp - np.log(np.exp(lp).sum())
            top = np.argsort(-lp, kind="stable")[:20]
            nxt = int(top[0])
            toks.append(nxt)
            lps.append(float(lp[nxt]))
            tops.append({f"token_id:{int(i)}": float(lp[i]) for i in top})
            if step < new_tokens - 1:
                llm.eval([nxt])
        lines.append({
            "id": f"cmpl-{setting}-{p.id}", "object": "text_completion", "model": MODEL,
            "choices": [{"index": 0, "text": llm.detokenize(toks).decode("utf-8", "replace"),
                         "finish_reason": "length",
                         "logprobs": {"tokens": [f"token_id:{t}" for t in toks], "token_logprobs": lps,
                                      "top_logprobs": tops}}],
            "kvfp": {"probe_id": p.id, "prompt_ids": list(map(int, p.ids))},
        })
    del llm
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(tmp, out)


def run_server(llama_cpp, gguf: Path, setting: str, suite_path: Path, suite, new_tokens: int, out: Path,
               threads: int) -> dict:
    """The whole user path: llama-cpp-python's own OpenAI-compatible server under one cache setting, on
    a loopback port, asked by ``kvfp query`` over HTTP. Returns what ``kvfp query`` reported."""
    import httpx

    summary = out.with_suffix(".query.json")
    if out.is_file() and summary.is_file():
        return json.loads(summary.read_text())
    types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0,
             "q4_1": llama_cpp.GGML_TYPE_Q4_1, "q5_0": llama_cpp.GGML_TYPE_Q5_0, "q5_1": llama_cpp.GGML_TYPE_Q5_1,
             "iq4_nl": llama_cpp.GGML_TYPE_IQ4_NL}
    k, v, fa = SETTINGS[setting]
    port = _free_port()
    n_ctx = max(p.n_tokens for p in suite.probes) + new_tokens + 64
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--type_k", str(types[k]),
           "--type_v", str(types[v]), "--flash_attn", str(fa), "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--verbose", "False"]
    log = open(out.with_suffix(".server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"llama_cpp.server exited ({server.returncode}); see {log.name}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        # repeat_penalty 1.0: llama-cpp-python's default 1.1 would pick tokens other than the argmax
        # (the logprobs it reports are the model's own either way; kvfp replays whatever was chosen)
        res = subprocess.run([sys.executable, "-m", "kvfp", "query", "--url", url, "--model-name", MODEL,
                              "--tokenizer-model", MODEL, "--probes", str(suite_path), "--out", str(out),
                              "--max-tokens", str(new_tokens), "--top-logprobs", "20", "--quiet", "--json",
                              "--extra-body", json.dumps({"repeat_penalty": 1.0})],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"kvfp query failed against llama.cpp ({setting}):\n{res.stderr}")
        summary.write_text(res.stdout)
        return json.loads(res.stdout)
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def top20_distance(log: Path, replays: list[np.ndarray]) -> float:
    """Mean |Δ| between a log's top-20 logprobs and replayed logits, each step's constant removed."""
    out = []
    for line, logits in zip(log.read_text().splitlines(), replays):
        tops = json.loads(line)["choices"][0]["logprobs"]["top_logprobs"]
        for t, top in enumerate(tops):
            ids = np.array([int(k.split(":")[1]) for k in top])
            obs = np.array(list(top.values()))
            x = logits[t].astype(np.float64)
            lp = x - x.max() - np.log(np.exp(x - x.max()).sum())
            d = obs - lp[ids]
            out.append(np.abs(d - d.mean()).mean())
    return float(np.mean(out))


def emulation_table(gguf: Path, suite, logs: dict[str, Path]) -> list[tuple[str, float]]:
    """How close each step of the engine profile brings kvfp's replay to llama.cpp's f16 logprobs."""
    from kvfp.compressors import parse_scheme
    from kvfp.models import load
    from kvfp.runner import engines, replay
    from kvfp.runner.engines.llamacpp import LlamaCppProfile

    model, _ = load(MODEL, attn="eager")
    types = engines.weight_types_from_gguf(gguf)
    lines = [json.loads(x) for x in logs["f16"].read_text().splitlines()]
    prompts = [x["kvfp"]["prompt_ids"] for x in lines]
    outs = [[int(t.split(":")[1]) for t in x["choices"][0]["logprobs"]["tokens"]] for x in lines]
    rows = []
    steps = [("float32 transformers (no profile)", None), ("+ matmul: activations in q8_1/q8_0 blocks", ("matmul",)),
             ("+ norm: ggml's RMSNorm rounding", ("matmul", "norm")),
             ("+ cache: f16 K/V", ("matmul", "norm", "cache")),
             ("+ attention: f16 query, f16 probabilities", ("matmul", "norm", "cache", "attention")),
             ("+ rope: ggml's angles (full profile)", ("matmul", "norm", "cache", "attention", "rope"))]
    for label, parts in steps:
        engines.install(model, None if parts is None else LlamaCppProfile(weight_types=types, parts=parts))
        try:
            reps = [tr.logits for tr in replay(model, parse_scheme("none"), prompts, outs, topk=1, logits=True,
                                               batch_size=8)]
        finally:
            engines.remove(model)
        rows.append((label, top20_distance(logs["f16"], reps)))
    # the engine against itself: f16 with flash attention, on the steps where both chose the same tokens
    a = [json.loads(x) for x in logs["f16"].read_text().splitlines()]
    b = [json.loads(x) for x in logs["f16-fa"].read_text().splitlines()]
    ds = []
    for la, lb in zip(a, b):
        ta, tb = la["choices"][0]["logprobs"], lb["choices"][0]["logprobs"]
        for t in range(len(ta["tokens"])):
            if ta["tokens"][:t] != tb["tokens"][:t]:
                break
            common = [k for k in ta["top_logprobs"][t] if k in tb["top_logprobs"][t]]
            d = np.array([ta["top_logprobs"][t][k] - tb["top_logprobs"][t][k] for k in common])
            ds.append(np.abs(d - d.mean()).mean())
    rows.append(("llama.cpp f16 against llama.cpp f16 with flash attention", float(np.mean(ds))))
    return rows


def identify_all(logs: dict[str, Path], clf: Path, suite_path: Path) -> dict:
    """Pooled verdict per setting, and the scored tokens needed (prefixes of the suite)."""
    from kvfp.fingerprint.features.extract import feature_matrix
    from kvfp.fingerprint.persist import load_for_model
    from kvfp.fingerprint.readers import load_observations
    from kvfp.fingerprint.reference import REFERENCE
    from kvfp.models import load
    from kvfp.probes import read_suite

    model, tok = load(MODEL, dtype=REFERENCE[1], attn=REFERENCE[2])
    trained = load_for_model(clf, model, tok)
    suite = read_suite(suite_path)
    runner = trained.reference_runner(model)
    tier = "topk-20"
    out = {}
    for setting, log in logs.items():
        # the log's own prompt ids: a server fed text may have tokenized a probe otherwise than its ids, and
        # span profiles only apply where it did not
        obs = load_observations(log, tok)
        probes = {o.probe_id: suite.by_id()[o.probe_id] for o in obs
                  if o.probe_id in suite.by_id() and suite.by_id()[o.probe_id].ids == o.prompt_ids}
        X = feature_matrix(obs, runner, [tier], probes)[tier]
        pooled = trained.identify(X, tier, pooled=True).to_dict()
        tokens = np.cumsum([o.steps for o in obs])
        needed = None
        for k in range(len(obs), 0, -1):  # the shortest prefix from which every longer one is right
            if str(trained.identify(X[:k], tier, pooled=True).verdict) != expected(setting):
                break
            needed = int(tokens[k - 1])
        out[setting] = {"pooled": pooled, "tokens_needed": needed, "scored_tokens": int(tokens[-1])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/real-engine"))
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=256, help="length of the suites' long probes")
    ap.add_argument("--more-schemes", action="store_true", help="also train on int8/int4 per token and group, fp8")
    ap.add_argument("--train-flash-attn", action="store_true",
                    help="also collect training data under the profile's flash-attention kernel")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--test-seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-emulation", action="store_true", help="skip the emulation-fidelity table")
    ap.add_argument("--path", choices=("server", "in-process"), default="server",
                    help="server: llama-cpp-python's OpenAI server asked by `kvfp query` over HTTP (the user's "
                         "path); in-process: the engine's logits read directly, top-20 keyed by token id")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # a spinning OpenMP pool costs up to 12x when shared
    llama_cpp = need_llama_cpp()

    from kvfp.models import gguf_source
    from kvfp.probes import generate_suite, write_suite
    from kvfp.probes.model_tokenizer import load_tokenizer

    t0 = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    gguf = gguf_source(MODEL)
    tok, model_max = load_tokenizer(MODEL)
    train_suite, test_suite = work / "train-probes.jsonl", work / "test-probes.jsonl"
    if not train_suite.is_file():
        write_suite(train_suite, generate_suite(tok, "quick", seed=args.train_seed, lengths=(args.prompt_len,),
                                                model_max=model_max, model_name=MODEL))
    if not test_suite.is_file():  # held out: other filler, needles and planted values (another seed)
        write_suite(test_suite, generate_suite(tok, "quick", seed=args.test_seed, lengths=(args.prompt_len,),
                                               model_max=model_max, model_name=MODEL))
    from kvfp.probes import read_suite

    suite = read_suite(test_suite)

    # 1. kvfp's own simulations, under kvfp's emulation of llama.cpp (both attention kernels)
    schemes = TRAIN_SCHEMES + (MORE_SCHEMES if args.more_schemes else [])
    data = []
    for fa in (False, True) if args.train_flash_attn else (False,):
        out = work / f"train-{'fa' if fa else 'nofa'}"
        flags = ["--flash-attn"] if fa else []
        args_ = ["collect", "--model", MODEL, "--probes", str(train_suite), "--out", str(out),
                 "--new-tokens", str(args.new_tokens), "--engine", "llama.cpp", *flags, "--attn", "eager",
                 "--batch-size", "8", "--shard-size", "8"]
        for s in schemes:
            args_ += ["--scheme", s]
        kvfp(*args_)
        data += ["--data", str(out)]
    clf = work / "classifier"
    if not clf.exists():
        kvfp("train", *data, "--out", str(clf), "--tier", "topk-20", "--candidates", ",".join(schemes))
    print(f"[{time.perf_counter() - t0:.0f}s] classifier ready", flush=True)

    # 2. the real engine
    logs, served = {}, {}
    for setting in SETTINGS:
        if args.path == "server":
            logs[setting] = work / f"llama.cpp-server-{setting}.jsonl"
            served[setting] = run_server(llama_cpp, gguf, setting, test_suite, suite, args.new_tokens, logs[setting],
                                         args.threads)
        else:
            logs[setting] = work / f"llama.cpp-{setting}.jsonl"
            run_engine(llama_cpp, gguf, setting, suite, args.new_tokens, logs[setting], args.threads)
    print(f"[{time.perf_counter() - t0:.0f}s] llama.cpp answered {len(suite.probes)} probes under "
          f"{len(SETTINGS)} settings ({args.path})", flush=True)
    for setting, s in served.items():
        ids = "accepted" if s["token_id_prompts"] else "refused"
        print(f"  {setting:14s} prompts as {s['prompt_mode']} (token ids {ids}), "
              f"top-k up to {s['top_logprobs_max']}, {s['short_steps']} of {s['steps']} steps with fewer entries, "
              f"prompt check {json.dumps(s['prompt_checks'])}, retries {s['retries']}")

    if not args.skip_emulation:
        print("\nkvfp's replay against llama.cpp's own f16 top-20 logprobs (mean |Δ|, each step's constant "
              "removed)")
        for label, value in emulation_table(gguf, suite, logs):
            print(f"  {label:58s} {value:.4f}")

    # 3. identification
    res = identify_all(logs, clf, test_suite)
    labels = sorted({expected(s) for s in SETTINGS} | {str(r["pooled"]["verdict"]) for r in res.values()})
    print("\nconfusion (rows: llama.cpp setting, expected scheme; columns: pooled verdict)")
    for s, r in res.items():
        v = str(r["pooled"]["verdict"])
        print(f"  {s:14s} {expected(s):20s} -> {v:20s} {'right' if v == expected(s) else 'WRONG'}")
    print("\nper setting: verdict, probability, gene, scored tokens the verdict needed (of those scored)")
    for s, r in res.items():
        p = r["pooled"]
        gene = p.get("gene") or {}
        top = dict((str(a), b) for a, b in p["schemes"])
        brief = {k: gene.get(k) for k in ("algorithm", "granularity", "compensation", "phase")}
        print(f"  {s:14s} {str(p['verdict']):20s} p={top.get(str(p['verdict']), float('nan')):.3f} "
              f"compressed={p['compressed']} unknown={p['unknown']} gene={json.dumps(brief)} "
              f"params={json.dumps(p.get('params') or {})} tokens={r['tokens_needed']} of {r['scored_tokens']}")
    right = sum(str(r["pooled"]["verdict"]) == expected(s) for s, r in res.items())
    print(f"\n{right} of {len(res)} settings named correctly; labels seen: {', '.join(labels)}")
    print(f"[{time.perf_counter() - t0:.0f}s] done")
    (work / "results.json").write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
