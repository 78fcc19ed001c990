"""Layer by layer: how closely kvfp's llama.cpp profile follows llama.cpp's own tensors.

llama.cpp's graph callback hands over every layer's output (``l_out-N``) while it evaluates a
prompt; kvfp replays the same prompt through smollm2-135m without a profile and with the llama.cpp
profile, and this prints their mean relative difference per layer at the first and the last
position. It shows where an emulation of quantized-activation arithmetic stops following the
engine: at the first q8 rounding that a last-bit difference flips.

    python benchmarks/engine_layers.py [--tokens 64]  (needs `make llama-cpp`)
"""

from __future__ import annotations

import argparse
import ctypes

import numpy as np


class _Tensor(ctypes.Structure):
    # the head of ggml.h's struct ggml_tensor, up to its name (llama-cpp-python 0.3.36)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


def engine_layers(gguf, prompt: list[int], n_layers: int) -> dict[int, np.ndarray]:
    """``{layer: (tokens, hidden) float64}`` as llama.cpp (f16 cache, no flash attention) computes them."""
    import llama_cpp
    from llama_cpp import _internals

    want = {f"l_out-{i}".encode(): i for i in range(n_layers)}
    got: dict[int, np.ndarray] = {}

    @llama_cpp.ggml_backend_sched_eval_callback
    def callback(ptr, ask, _user):
        t = _Tensor.from_address(ptr)
        if ask:
            return t.name in want
        if t.name in want and t.type == 0 and t.nb[0] == 4 and t.nb[1] == 4 * t.ne[0]:  # f32, contiguous
            n = t.ne[0] * t.ne[1]
            flat = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float)), shape=(n,))
            got[want[t.name]] = flat.reshape(t.ne[1], t.ne[0]).astype(np.float64)
        return True

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=len(prompt) + 16, n_batch=512, logits_all=True,
                          n_threads=2, verbose=False)
    llm.context_params.cb_eval = callback
    llm._ctx = _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
    llm._batch = _internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=1, verbose=False)
    llm.eval(prompt)
    return got


def kvfp_layers(model, prompt: list[int], profile) -> dict[int, np.ndarray]:
    from kvfp.compressors import parse_scheme
    from kvfp.runner import engines, generate

    got: dict[int, np.ndarray] = {}

    def keep(i):
        def hook(module, args, out):
            got.setdefault(i, (out[0] if isinstance(out, tuple) else out)[0].double().numpy())  # prefill only
        return hook

    hooks = [layer.register_forward_hook(keep(i)) for i, layer in enumerate(model.model.layers)]
    engines.install(model, profile)
    try:
        generate(model, parse_scheme("none"), [prompt], 1)  # the prefill is the forward compared
    finally:
        engines.remove(model)
        for h in hooks:
            h.remove()
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    from kvfp.models import gguf_source, load
    from kvfp.models.corpus import probe_text
    from kvfp.runner import engines

    model, tok = load("smollm2-135m", attn="eager")
    gguf = gguf_source("smollm2-135m")
    prompt = tok(probe_text(max_chars=20_000), add_special_tokens=False)["input_ids"][1000:1000 + args.tokens]
    n = model.config.num_hidden_layers
    ref = engine_layers(gguf, prompt, n)
    plain = kvfp_layers(model, prompt, None)
    emulated = kvfp_layers(model, prompt, engines.for_model("smollm2-135m", "llama.cpp"))

    def rel(a, b, pos):
        return np.abs(a[pos] - b[pos]).mean() / np.abs(a[pos]).mean()

    print(f"mean |kvfp - llama.cpp| / mean |llama.cpp| of each layer's output, {len(prompt)}-token prompt")
    print(f"{'layer':>5} {'first, float32':>15} {'first, profile':>15} {'last, float32':>15} {'last, profile':>15}")
    for i in range(n):
        print(f"{i:5d} {rel(ref[i], plain[i], 0):15.2e} {rel(ref[i], emulated[i], 0):15.2e} "
              f"{rel(ref[i], plain[i], -1):15.2e} {rel(ref[i], emulated[i], -1):15.2e}")


if __name__ == "__main__":
    main()
