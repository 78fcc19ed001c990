"""Which ggml type each weight matrix of a GGUF has, under transformers' module names."""

from __future__ import annotations

from pathlib import Path

from kvfp.errors import KvfpError

# llama-architecture GGUF tensor names → transformers Llama module names
_BLOCK = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def weight_types_from_gguf(path: str | Path) -> dict[str, str]:
    """``{module name: ggml type name}`` for every weight matrix of a llama-architecture GGUF.

    The output projection is ``output.weight``, or the token embedding where the model ties them
    (llama.cpp then multiplies by ``token_embd`` in its own type).
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise KvfpError(f"cannot read the GGUF {path}: {e}", exit_code=2) from None
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    out = {}
    for name, ty in types.items():
        parts = name.split(".")
        if parts[0] == "blk" and len(parts) == 4 and parts[2] in _BLOCK:
            out[f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}"] = ty
    out["lm_head"] = types.get("output.weight", types.get("token_embd.weight", "F32"))
    return out
