"""Endpoint logs in, :class:`~kvfp.fingerprint.observation.Observation` out.

Formats (``docs/log-formats.md``): kvfp's own JSONL, OpenAI completions, OpenAI chat (both with
vLLM's ``prompt_logprobs``), and text only. One file holds one format, detected from its first
line unless named. Every line yields one observation per choice (``n > 1`` gives several, in
order, each with ``meta["choice"]``). Any defect in a log is a :class:`~kvfp.errors.KvfpError`
naming the file, line and field.
"""

from __future__ import annotations

from pathlib import Path

from kvfp.errors import KvfpError, UnknownNameError
from kvfp.fingerprint.observation import Observation
from kvfp.fingerprint.readers import kvfp_jsonl, openai_chat, openai_completions, text
from kvfp.fingerprint.readers.assemble import assemble
from kvfp.fingerprint.readers.detect import FORMATS, describe, detect_record
from kvfp.fingerprint.readers.fields import Line
from kvfp.fingerprint.readers.tokens import token_table
from kvfp.probes import ProbeSuite, read_suite

_READERS = {m.NAME: m.read for m in (kvfp_jsonl, openai_completions, openai_chat, text)}


def read_log(path: Path | str, tokenizer, format: str = "auto", suite: ProbeSuite | None = None,
             max_positions: int | None = None) -> list[Observation]:
    """Read an endpoint log.

    Parameters
    ----------
    path : a JSON-lines file
    tokenizer : the served model's tokenizer (maps token strings and bytes back to ids)
    format : one of :data:`FORMATS`, or ``"auto"`` (from the first non-empty line's keys)
    suite : the probe suite that lines naming only ``kvfp.probe_id`` are looked up in
    max_positions : the served model's context length; a response whose prompt and output
        together exceed it is refused (that model cannot have produced it)

    Returns
    -------
    One observation per choice per line, in file order.
    """
    if format != "auto" and format not in FORMATS:
        raise UnknownNameError(f"unknown log format {format!r}; formats are auto, {', '.join(FORMATS)}")
    path = Path(path)
    if path.is_dir():
        raise KvfpError(f"log {path} is a folder; pass the log file (JSON lines) itself", exit_code=2)
    if not path.is_file():
        raise KvfpError(f"log {path} not found", exit_code=2)
    table = token_table(tokenizer)
    raws, fmt, first = [], None if format == "auto" else format, None
    for n, body in _lines(path):
        line = Line(str(path), n)
        rec = line.parse(body)
        seen = detect_record(rec)
        if fmt is None:
            if seen is None:
                raise line.error(None, f"not a known log format (top-level keys: {describe(rec)}); formats are "
                                       f"{', '.join(FORMATS)}")
            fmt, first = seen, n
        elif seen is not None and seen != fmt:
            origin = f"the file began as {fmt} (line {first})" if first else f"{fmt} was asked for"
            raise line.error(None, f"this line is {seen} but {origin}; a log file holds one format")
        raws += _READERS[fmt](rec, line, table)
    if not raws:
        raise KvfpError(f"{path}: empty file, no log lines")
    return assemble(raws, table, tokenizer, suite, max_positions)


def load_observations(path: Path | str, tokenizer, fmt: str = "auto", suite: ProbeSuite | Path | str | None = None,
                      max_positions: int | None = None) -> list[Observation]:
    """:func:`read_log` for commands: ``suite`` may be a suite file, and the only exception a
    user's mistake raises is :class:`KvfpError`."""
    if suite is not None and not isinstance(suite, ProbeSuite):
        suite = read_suite(suite)
    return read_log(path, tokenizer, format=fmt, suite=suite, max_positions=max_positions)


def _lines(path: Path):
    """``(line number, text)`` of each non-empty line."""
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    body = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise KvfpError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                if body.strip():
                    yield n, body
    except OSError as e:
        raise KvfpError(f"cannot read log {path}: {e.strerror or e}") from None


__all__ = ["read_log", "load_observations", "FORMATS"]
