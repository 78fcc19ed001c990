"""A saved classifier is checked before it is believed: digest, finite values, a trial prediction.

A forensic tool must never turn a damaged or altered file into a verdict. Three checks, each
naming the file and what is wrong:

* the **digest**: sha256 over every array (name, dtype, shape, bytes) and over the JSON document
  (canonical form, the digest itself left out), recorded at save time. Any bit flipped, any label
  swapped, any value rewritten changes it. It is a checksum, not a signature: it catches damage
  and edits made without kvfp, not a forger who recomputes it; the next two checks do not depend
  on it.
* **values**: every floating array finite.
* a **trial prediction** of each tier on a row of zeros and a row of ones: shapes that do not fit
  each other, indices out of range and probabilities that are not finite or do not sum to one show
  here, at load time, instead of as a traceback or a verdict printed with ``nan``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from kvfp.errors import KvfpError

DIGEST_KEY = "digest"


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def document_digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False).encode()).hexdigest()


def make_digest(doc: dict, arrays: dict[str, np.ndarray]) -> dict:
    return {"algorithm": "sha256", "arrays": arrays_digest(arrays), "document": document_digest(doc)}


def check_digest(doc: dict, arrays: dict[str, np.ndarray], where: str) -> None:
    recorded = doc.get(DIGEST_KEY)
    if not isinstance(recorded, dict) or recorded.get("algorithm") != "sha256":
        raise KvfpError(f"{where}: the classifier records no integrity digest; refusing to use it (retrain it with "
                        f"this kvfp)", exit_code=2)
    if recorded.get("document") != document_digest(doc):
        raise KvfpError(f"{where}: fingerprinter.json does not match its recorded digest: the file was damaged or "
                        f"altered after training; refusing to use it", exit_code=2)
    if recorded.get("arrays") != arrays_digest(arrays):
        raise KvfpError(f"{where}: arrays.safetensors does not match the digest recorded in fingerprinter.json: the "
                        f"arrays were damaged or altered after training; refusing to use it", exit_code=2)


def check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
    for name in sorted(arrays):
        a = arrays[name]
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise KvfpError(f"{where}: array {name!r} holds {bad} value(s) that are NaN or infinite; the classifier "
                            f"is damaged", exit_code=2)


def trial_predictions(trained, where: str) -> None:
    """Run every tier once on made-up rows; anything but finite probabilities is a damaged file."""
    for tier in trained.tiers:
        d = len(trained.feature_names[tier])
        X = np.stack([np.zeros(d), np.ones(d)])
        try:
            ids = trained.identify(X, tier)
        except KvfpError:
            raise
        except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as e:
            raise KvfpError(f"{where}: tier {tier}: the saved arrays do not fit together ({type(e).__name__}: "
                            f"{str(e)[:200]}); the classifier is damaged", exit_code=2) from None
        for ident in ids:
            probs = np.array([p for _, p in ident.schemes], dtype=np.float64)
            if not np.isfinite(probs).all() or not np.isfinite(float(ident.novelty)):
                raise KvfpError(f"{where}: tier {tier}: a trial prediction gave non-finite probabilities; the "
                                f"classifier is damaged", exit_code=2)
