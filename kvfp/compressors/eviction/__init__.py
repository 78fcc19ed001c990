"""Eviction and selection schemes: which tokens attention sees (role ``eviction``)."""

from kvfp.compressors.eviction.duo import DuoAttention
from kvfp.compressors.eviction.fastgen import FastGen
from kvfp.compressors.eviction.h2o import H2O
from kvfp.compressors.eviction.knorm import KeyNorm
from kvfp.compressors.eviction.pyramidkv import PyramidKV
from kvfp.compressors.eviction.quest import Quest
from kvfp.compressors.eviction.snapkv import SnapKV
from kvfp.compressors.eviction.streaming import StreamingLLM
from kvfp.compressors.eviction.tova import TOVA
from kvfp.compressors.eviction.vatp import VATP
from kvfp.compressors.eviction.window import SlidingWindow

FAMILIES = (SlidingWindow, StreamingLLM, H2O, SnapKV, PyramidKV, TOVA, KeyNorm, VATP, DuoAttention,
            Quest, FastGen)
