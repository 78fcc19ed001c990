"""Engine profiles: the replay doing a serving engine's own arithmetic instead of transformers'.

A profile is installed on a loaded model (hooks on its Linear and rotary modules, an attribute on
its attention modules that kvfp's attention function consults) and removed again; ``transformers``
means no profile. Only kvfp's runner honours the attention part, so a profiled model is meant to
be run through :func:`kvfp.runner.generate` / :func:`kvfp.runner.replay`.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from kvfp.errors import UnknownNameError
from kvfp.runner.engines.ggml_names import weight_types_from_gguf
from kvfp.runner.engines.llamacpp import LlamaCppProfile

ENGINES = ("transformers", "llama.cpp")


def check_engine(name: str) -> str:
    """``name`` if it is an engine kvfp knows, else :class:`UnknownNameError` (exit code 2)."""
    if name not in ENGINES:
        raise UnknownNameError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    return name


def make_profile(name: str, *, gguf: str | Path | None = None, flash_attn: bool = False):
    """The profile called ``name`` (``None`` for ``transformers``).

    ``gguf`` is the GGUF file the engine serves: the ggml type of every weight matrix decides how
    llama.cpp converts activations. Without it, weights are taken as F32 (no conversion).
    """
    if name in (None, "", "transformers"):
        return None
    check_engine(name)
    return LlamaCppProfile(weight_types=weight_types_from_gguf(gguf) if gguf else {}, flash_attn=flash_attn)


def install(model, profile) -> None:
    """Install ``profile`` on ``model`` (replacing any installed one); ``None`` removes it."""
    remove(model)
    if profile is not None:
        model.kvfp_engine = profile
        model._kvfp_engine_handles = profile.install(model)


def remove(model) -> None:
    profile = getattr(model, "kvfp_engine", None)
    if profile is not None:
        handles = model._kvfp_engine_handles
        del model.kvfp_engine, model._kvfp_engine_handles
        profile.uninstall(model, handles)


def profile_of(model):
    return getattr(model, "kvfp_engine", None)


def clone(model, profile):
    """A deep copy of ``model`` carrying ``profile`` (hooks do not survive a deep copy intact: the
    copy's handles would remove the original's, so the copy is made without them)."""
    current = profile_of(model)
    remove(model)
    try:
        twin = copy.deepcopy(model)
    finally:
        install(model, current)
    install(twin, profile)
    return twin




def for_model(model_name: str, engine: str, *, flash_attn: bool = False, parts=None):
    """The profile of ``engine`` for the model called ``model_name`` (``None`` for transformers).

    For llama.cpp the weights' ggml types come from the GGUF the model was converted from
    (:func:`kvfp.models.gguf_source`); a model that has none is taken as an F32 GGUF.
    """
    if engine in (None, "", "transformers"):
        return None
    from kvfp.models import gguf_source

    profile = make_profile(engine, gguf=gguf_source(model_name), flash_attn=flash_attn)
    if parts is not None:
        profile = dataclasses.replace(profile, parts=tuple(parts))
    return profile


def profile_from_description(desc: dict | None, model_name: str | None):
    """The profile a classifier manifest describes (``LlamaCppProfile.describe()``), rebuilt for
    ``model_name``; ``None`` for none."""
    if not desc:
        return None
    return for_model(model_name, desc["engine"], flash_attn=bool(desc.get("flash_attn")), parts=desc.get("parts"))


__all__ = ["ENGINES", "LlamaCppProfile", "check_engine", "clone", "for_model", "install", "make_profile",
           "profile_from_description", "profile_of", "remove", "weight_types_from_gguf"]
