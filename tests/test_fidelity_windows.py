"""``benchmarks/fidelity.py`` scores windows that stay within one probe-split file."""

import importlib.util
from pathlib import Path

from kvfp.models.corpus import is_calibration, load_split

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


def test_each_window_is_the_start_of_one_probe_file(tiny):
    spec = importlib.util.spec_from_file_location("fidelity", SCRIPT)
    fid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid)
    _, tok = tiny
    wins = fid.windows(tok, 3, 2048)
    starts = {}
    for f in load_split("heldout"):
        ids = tok(f.text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= 2047:
            starts[tuple(ids[:2047])] = f.relpath
    assert len(wins) == 3
    for w in wins:
        assert len(w) == 2048 and w[0] == tok.bos_token_id
        # the window is BOS plus the first 2047 tokens of one file, and never a calibration file
        assert not is_calibration(starts[tuple(w[1:])])
    assert len({tuple(w) for w in wins}) == 3  # three different files
