import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ``@triton.jit`` reads TRITON_INTERPRET when it decorates: set it before any test module (of any
# folder) can import a kernel module, or kernels decorated for a GPU meet the interpreter later
if "TRITON_INTERPRET" not in os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from kvfp.models import load  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The packaged kvfp-tiny (float32, sdpa) and its tokenizer."""
    torch.manual_seed(0)
    return load("kvfp-tiny")


@pytest.fixture(scope="session")
def tiny_eager():
    return load("kvfp-tiny", attn="eager")


@pytest.fixture(scope="session")
def heldout_ids(tiny):
    from kvfp.models.lm_checks import heldout_stream

    _, tok = tiny
    return heldout_stream(tok)


def prompt(heldout_ids, tok, n: int, offset: int = 0) -> list[int]:
    """BOS + n-1 held-out tokens."""
    return [tok.bos_token_id] + heldout_ids[offset : offset + n - 1].tolist()


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """smollm2-135m converted once per session into a fresh KVFP_CACHE: ``(cache root, folder)``.

    Tests that go through kvfp's name lookup set ``KVFP_CACHE`` to the root, so they find this
    conversion instead of making their own. Skipped when the package carrying the GGUF is absent.
    """
    from kvfp.errors import UnknownNameError
    from kvfp.models.gguf_models import ensure_converted, find_gguf

    try:
        find_gguf("smollm2-135m")
    except UnknownNameError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("kvfp-cache-smollm2")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVFP_CACHE", str(root))
        folder = ensure_converted("smollm2-135m")
    return root, folder
