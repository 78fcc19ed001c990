"""The corpus split and the training recipe, on a micro configuration."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvfp.models.corpus import corpus_hash, is_held_out, load_split
from kvfp.models.sink_floor import SinkFloor
from kvfp.models.train_tiny import Phase, TinyTrainConfig, train_tiny


def test_split_is_a_fixed_rule_on_paths():
    train, held = load_split("train"), load_split("heldout")
    assert held and train
    assert all(is_held_out(f.relpath) for f in held)
    assert not any(is_held_out(f.relpath) for f in train)
    assert not {f.relpath for f in train} & {f.relpath for f in held}
    assert 0.02 < len(held) / (len(held) + len(train)) < 0.10
    assert corpus_hash(held) == corpus_hash(load_split("heldout"))
    with pytest.raises(ValueError):
        load_split("test")


def _micro(seed=0):
    return TinyTrainConfig(seed=seed, vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, phases=[Phase(64, 2, 3), Phase(128, 1, 2)],
                           eval_seqs=1, eval_len=128, max_train_files=40,
                           sink_floor=SinkFloor(start_step=2))  # the sink term trains in steps 2-4


@pytest.mark.slow
def test_micro_training_is_deterministic_and_loads_without_kvfp(tmp_path):
    r1 = train_tiny(tmp_path / "a", _micro(), log=lambda m: None)
    r2 = train_tiny(tmp_path / "b", _micro(), log=lambda m: None)
    w1, w2 = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert r1["heldout_loss"] == r2["heldout_loss"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert tok("x = 1")["input_ids"][0] == tok.bos_token_id
    assert model.config.num_key_value_heads == 2
    rec = json.loads((tmp_path / "a/kvfp_tiny.json").read_text())
    assert rec["corpus"]["train_hash"] and rec["train_config"]["phases"][1]["seq_len"] == 128
    with pytest.raises(FileExistsError):
        train_tiny(tmp_path / "a", _micro(), log=lambda m: None)
