"""Random names and values that families plant: readable to a person, meaningless to the model."""

from __future__ import annotations

import random
import string

_ALNUM = string.ascii_lowercase + string.digits
# Words for constant names; upper-case Python constants blend into the stdlib filler.
_WORDS = ("ALPHA", "BRIDGE", "CACHE", "DELTA", "EMBER", "FALCON", "GARNET", "HARBOR", "INDIGO", "JUNIPER",
          "KERNEL", "LANTERN", "MAPLE", "NECTAR", "ORBIT", "PEBBLE", "QUARTZ", "RAVEN", "SIGNAL", "TIMBER",
          "UMBRA", "VECTOR", "WILLOW", "XENON", "YONDER", "ZEPHYR")


def value(rng: random.Random, n: int = 8) -> str:
    """``n`` random lower-case letters and digits (``"q8xk3m2a"``)."""
    return "".join(rng.choice(_ALNUM) for _ in range(n))


def constant_names(rng: random.Random, k: int) -> list[str]:
    """``k`` distinct constant names such as ``RAVEN_ORBIT_42``."""
    names: set[str] = set()
    out = []
    while len(out) < k:
        a, b = rng.sample(_WORDS, 2)
        name = f"{a}_{b}_{rng.randrange(10, 100)}"
        if name not in names:
            names.add(name)
            out.append(name)
    return out


def assignment(ctx, key: str, val: str, value_span: str, name: str | None = None):
    """The planted line ``\\nKEY = "value"\\n`` with the value's ids under ``value_span``."""
    return ctx.piece(f'\n{key} = "', (val, value_span), '"\n', name=name)


def question(ctx, key: str):
    """The prompt's last line asks for ``key``'s value: the continuation should be the value."""
    return ctx.piece(f'\n\n# The value assigned to {key} earlier in this file:\n{key} = "', name="question")
