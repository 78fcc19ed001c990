"""``{"text": …, "kvfp": {…}}``: generated text only (the ``tokens`` tier, after re-tokenizing)."""

from __future__ import annotations

from kvfp.fingerprint.readers.fields import Line, as_str, req
from kvfp.fingerprint.readers.prompt import read_kvfp_block
from kvfp.fingerprint.readers.raw import RawChoice
from kvfp.fingerprint.readers.tokens import TokenTable

NAME = "text"


def read(rec: dict, line: Line, table: TokenTable) -> list[RawChoice]:
    text = as_str(line, req(line, rec, "text", "text"), "text")
    return [RawChoice(line=line, source=NAME, chosen=None, text=text, kvfp=read_kvfp_block(line, rec, table.size),
                      meta={"line": line.n})]
