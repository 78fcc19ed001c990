"""The sink-floor training term: its BOS mass is the model's own attention, and it leaves the
forward pass the model computes untouched."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kvfp.models.sink_floor import NAME, SinkFloor, SinkMassCollector


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def test_bos_mass_is_the_eager_attention_on_position_zero():
    model = _model()
    x = torch.randint(3, 64, (2, 40))
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attns = model(input_ids=x, output_attentions=True).attentions  # (B, H, T, T) per layer
    collector = SinkMassCollector(SinkFloor(queries=16, min_pos=4), seed=0)
    probe = SinkMassCollector(SinkFloor(queries=16, min_pos=4), seed=0)  # same draws, to know them
    model.set_attn_implementation(NAME)
    with torch.no_grad():
        model(input_ids=x, sink_collector=collector)
    for layer, a in enumerate(attns):
        positions = probe.sample_queries(40)
        assert positions.min() >= 4
        expect = a[:, :, positions, 0].mean()
        assert torch.allclose(collector.mass[layer], expect, atol=1e-5), layer


def test_training_attention_computes_the_same_forward_as_sdpa():
    model = _model()
    x = torch.randint(3, 64, (2, 40))
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        plain = model(input_ids=x).logits
    model.set_attn_implementation(NAME)
    with torch.no_grad():
        trained = model(input_ids=x, sink_collector=SinkMassCollector(SinkFloor(), seed=0)).logits
    assert torch.equal(plain, trained)


def test_penalty_is_a_hinge_on_layers_from_from_layer():
    c = SinkMassCollector(SinkFloor(floor=0.3, weight=2.0, from_layer=1), seed=0)
    c.mass = {0: torch.tensor(0.0), 1: torch.tensor(0.1), 2: torch.tensor(0.5)}
    assert c.penalty().item() == pytest.approx(2.0 * 0.2)  # layer 0 ignored, layer 2 above the floor
    assert c.mass == {}  # each forward pass starts afresh


def test_penalty_raises_bos_mass_when_trained_on():
    model = _model().train()
    model.set_attn_implementation(NAME)
    collector = SinkMassCollector(SinkFloor(floor=0.5, queries=32), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randint(3, 64, (4, 48))
    x[:, 0] = 1  # a fixed first token, as BOS is in training
    masses = []
    for _ in range(60):
        model(input_ids=x, sink_collector=collector)
        masses.append(min(collector.mass[i].item() for i in (1, 2)))
        collector.penalty().backward()
        opt.step()
        opt.zero_grad()
    assert masses[0] < 0.2 and masses[-1] > 0.45


def test_without_a_collector_the_training_attention_refuses():
    model = _model()
    model.set_attn_implementation(NAME)
    with pytest.raises(RuntimeError, match="sink_collector"):
        model(input_ids=torch.randint(3, 64, (1, 8)))
