"""A probe as the endpoint is sent it, and the prompt ids the endpoint really saw.

Token ids are exact and are sent where the server takes them. Otherwise the probe goes as text and
the server tokenizes it, perhaps differently from the probe's own ids (BPE merges across the seams
where a probe's pieces were joined); ``echo`` returns the tokens the engine used, which are mapped
back to ids here. In chat the prompt is the chat template applied to the probe's text.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvfp.fingerprint.readers.resolve import resolve_chosen
from kvfp.fingerprint.readers.tokens import token_table
from kvfp.models.chat import chat_prompt_ids


@dataclass
class PromptText:
    tokenizer: object

    def __post_init__(self):
        tok = self.tokenizer
        with_special = tok("a")["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        self.auto_prefix = len(with_special) - len(plain)  # ids the tokenizer adds in front (a BOS)
        self.prefix_ids = list(with_special[: self.auto_prefix])

    def text(self, ids: list[int]) -> str:
        """The probe's text without the special tokens a server's tokenizer adds by itself."""
        body = ids[len(self.prefix_ids):] if self.prefix_ids and ids[: len(self.prefix_ids)] == self.prefix_ids else ids
        return self.tokenizer.decode(body)

    def encode(self, text: str) -> list[int]:
        """The text as the model's tokenizer segments it, special tokens added its own way: what a
        server running the same tokenizer feeds the model."""
        return [int(i) for i in self.tokenizer(text)["input_ids"]]

    def chat_ids(self, ids: list[int]) -> list[int]:
        """The chat template applied to the probe as one user message, the assistant's turn opened."""
        return chat_prompt_ids(self.tokenizer, [{"role": "user", "content": self.text(ids)}])


def echoed_ids(tokens: list[str], sent: str, tokenizer) -> tuple[list[int] | None, str]:
    """Map the echoed prompt's token strings to ids: ``(ids, how)``.

    ``how`` is ``"exact"`` or ``"text"`` when the ids are certain, ``None`` ids when some string is
    not in the vocabulary. Ambiguous strings (several ids decode alike) are pinned by the text that
    was sent: the tokens must spell it, with any leading special token the server added.
    """
    table = token_table(tokenizer)
    cands = [table.lookup_string(s) for s in tokens]
    if any(not c for c in cands):
        return None, "unknown-token"
    first = None
    for target in (sent, (tokens[0] if tokens else "") + sent):
        res = resolve_chosen(cands, target, table)
        if res.how in ("exact", "text"):
            return res.ids, res.how
        first = first or res
    return first.ids, first.how
