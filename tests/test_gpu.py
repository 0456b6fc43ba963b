"""The PyTorch CUDA fallback (`make test` skips it; `pytest -m gpu` on a host with an NVIDIA GPU runs it):
DEVICE=auto picks CUDA, and the bf16 CUDA engine answers the tiny model's questions as the fp32 CPU one does
for the first tokens (random weights make later tokens sensitive to bf16 rounding), streaming included."""
from __future__ import annotations

import pytest
from model_fixtures import make_engine, photo

from runtime.types import GenerationOptions, Turn

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_engine(model_cache):
    from runtime.select import nvidia_gpu_present, torch_cuda_available

    if not (nvidia_gpu_present() and torch_cuda_available()):
        pytest.skip("no CUDA GPU visible to PyTorch")
    return make_engine(model_cache, backend="auto", device="auto")


def test_auto_picks_cuda_with_torch(cuda_engine):
    info = cuda_engine.info()
    assert (info["backend"], info["device"]) == ("torch", "cuda")


def test_cuda_answers_like_the_cpu_reference(cuda_engine, model_cache):
    cpu = make_engine(model_cache, backend="torch", device="cpu")
    turns = [Turn("user", "what is this?", [photo(size=(448, 448))])]
    options = GenerationOptions(max_new_tokens=4, max_tiles=1)
    streamed = []
    gpu = cuda_engine.chat(turns, options, on_text=streamed.append)
    assert "".join(streamed) == gpu.text
    assert gpu.text[:1] == cpu.chat(turns, options).text[:1]
