"""Targets, the table ``kvfp evaluate`` prints, and its JSON.

The targets are the issue's: measured by ``kvfp evaluate``, never asserted in unit tests.
"""

from __future__ import annotations

import json

from rich.table import Table

# figure -> {tier: (comparison, bound)}; "*" applies to every tier
TARGETS = {
    "scheme_accuracy": {"logits": (">=", 0.99), "topk-20": (">=", 0.97), "topk-5": (">=", 0.95)},
    "gene_accuracy": {"tokens": (">=", 0.85)},
    "false_alarm_rate": {"*": ("<=", 0.01)},
    "tokens_to_separate": {"*": ("<=", 1000)},
}
COLUMNS = (("scheme_accuracy", "scheme acc"), ("scheme_accuracy_lookalike", "… look-alikes merged"),
           ("endpoint_accuracy", "endpoint acc (pooled)"),
           ("gene_accuracy", "algorithm acc"), ("macro_f1", "macro-F1"),
           ("open_set_auroc", "open-set AUROC"), ("false_alarm_rate", "false alarms"),
           ("tokens_to_separate", "tokens {a} vs {b}"))


def target_of(figure: str, tier: str) -> tuple[str, float] | None:
    t = TARGETS.get(figure, {})
    return t.get(tier, t.get("*"))


def figure_value(fig: dict, figure: str) -> float | None:
    """The number a target is checked against (tokens: the count, ``None`` when the AUROC never
    reached 0.99 within the tokens tried)."""
    v = fig.get(figure)
    if figure == "tokens_to_separate":
        return None if v is None or not v["reached"] else float(v["tokens"])
    return v


def check(fig: dict, figure: str, tier: str) -> bool | None:
    """Whether ``figure`` meets its target at ``tier`` (``None``: no target there)."""
    tgt = target_of(figure, tier)
    if tgt is None:
        return None
    v = figure_value(fig, figure)
    if v is None:
        return False
    op, bound = tgt
    return v >= bound if op == ">=" else v <= bound


def with_targets(result: dict) -> dict:
    """``result`` with ``targets``: per tier and figure, the bound and whether it is met."""
    out = {}
    for tier, fig in result["tiers"].items():
        row = {}
        for figure, _ in COLUMNS:
            tgt = target_of(figure, tier)
            if tgt is not None:
                row[figure] = {"target": f"{tgt[0]} {tgt[1]:g}", "met": check(fig, figure, tier)}
        out[tier] = row
    return {**result, "targets": out}


def to_json(result: dict) -> str:
    return json.dumps(with_targets(result), indent=2)


def _number(figure: str, fig: dict) -> str:
    v = fig.get(figure)
    if v is None:
        return "—"
    if figure == "false_alarm_rate":
        return f"{v:.1%} ({fig['false_alarms']}/{fig['null_observations']})"
    if figure == "endpoint_accuracy":
        return f"{v:.3f} ({round(v * fig['endpoints'])}/{fig['endpoints']})"
    if figure == "tokens_to_separate":
        if v["reached"]:
            return f"{v['tokens']:,} (t={v['t']}×m={v['m']})"
        return f"> {v['tokens']:,} (AUROC {v['auroc']:.3f})"
    return f"{v:.3f}"


def cell(figure: str, fig: dict, tier: str) -> str:
    text = _number(figure, fig)
    tgt, ok = target_of(figure, tier), check(fig, figure, tier)
    if tgt is None:
        return text
    mark = "[green]✓[/]" if ok else "[red]✗[/]"
    bound = f"{tgt[1]:.0%}" if figure == "false_alarm_rate" else f"{tgt[1]:,g}"
    return f"{text} {mark} [dim]{'≥' if tgt[0] == '>=' else '≤'}{bound}[/]"


def table(result: dict) -> Table:
    """One row per tier, each figure with its target and ✓/✗ where the issue sets one."""
    c, p = result["counts"], result["protocol"]
    a, b = p["pair"]
    t = Table("tier", *(label.format(a=a, b=b) for _, label in COLUMNS),
              title=f"kvfp evaluate — {result['model']} ({p['mode']}): {c['train_observations']} train / "
                    f"{c['test_observations']} test observations, {c['schemes']} schemes, "
                    f"{c['candidates']} candidates",
              caption=f"train: {p['train']}; test: {p['test']}. Look-alikes: {c.get('lookalike_observations', 0)} "
                      f"test observations on which another candidate's replay equals the true scheme's. "
                      f"Open set: mean over {len(p['held_out'])} held-out schemes. {_timing(result['seconds'])}")
    for tier, fig in result["tiers"].items():
        t.add_row(tier, *(cell(figure, fig, tier) for figure, _ in COLUMNS))
    return t


def _timing(seconds: dict) -> str:
    parts = [f"{k.replace('_', ' ')} {v:.0f}s" for k, v in seconds.items() if k != "total"]
    return f"Time {seconds.get('total', 0):.0f}s ({', '.join(parts)})."
