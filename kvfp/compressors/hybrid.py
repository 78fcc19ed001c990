"""``a+b``: an eviction scheme whose kept entries are stored by a quantization scheme."""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.compressors.gene import Gene
from kvfp.compressors.scheme import Scheme


@dataclass(frozen=True)
class Hybrid(Scheme):
    evict: Scheme
    store: Scheme

    family = "hybrid"
    grammar = "EVICTION+QUANTIZATION  (e.g. window-256+int4-pertoken)"
    pattern = r"(?!)"  # parsed by the registry, which splits on '+'
    summary = "eviction composed with quantization"

    def __post_init__(self):
        if self.evict.role != "eviction":
            raise ValueError(f"the first part of a hybrid must be an eviction scheme, not {self.evict.name}")
        if self.store.role != "storage":
            raise ValueError(f"the second part of a hybrid must be a token-storage quantization scheme, "
                             f"not {self.store.name}")

    @property
    def name(self) -> str:
        return f"{self.evict.name}+{self.store.name}"

    @property
    def gene(self) -> Gene:
        a, b = self.evict.gene, self.store.gene
        phases = {a.phase, b.phase}
        return Gene(
            algorithm="hybrid",
            granularity=tuple(dict.fromkeys(a.granularity + b.granularity)),
            strategy="dynamic" if "dynamic" in (a.strategy, b.strategy) else "static",
            importance=a.importance,
            compensation=tuple(dict.fromkeys(a.compensation + b.compensation)),
            phase=phases.pop() if len(phases) == 1 else "both",
            params={**a.params, **b.params},
        )

    def check_model(self, model) -> None:
        self.evict.check_model(model)
        self.store.check_model(model)

    def prepare(self, model):
        return {"evict": self.evict.prepare(model), "store": self.store.prepare(model)}

    def make_layer(self, layer_idx, num_layers, step, prep=None, make_store=None):
        prep = prep or {}
        store = self.store.make_store(layer_idx, num_layers, prep.get("store"), step)
        return self.evict.make_layer(layer_idx, num_layers, step, prep.get("evict"), make_store=store)

    @classmethod
    def canonical(cls):
        return []  # listed by the registry, which knows the member families
