"""All device and engine choice in one place: DEVICE and BACKEND -> a loaded backend."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from runtime.artifacts import check_export
from runtime.errors import ModelNotReady
from runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)


def nvidia_gpu_present() -> bool:
    """Cheap check for an NVIDIA GPU that does not import torch (the CPU path must stay torch-free)."""
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def torch_cuda_available() -> bool:
    """True when torch is installed and sees a CUDA device (imports torch: call only when a GPU is present)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose(settings: RuntimeSettings) -> tuple[str, str]:
    """(backend, device) for the settings; raises ModelNotReady when the request cannot be met."""
    device = settings.device
    if device == "auto":
        device = "cuda" if nvidia_gpu_present() and torch_cuda_available() else "cpu"
    if device == "cuda":
        if not torch_cuda_available():
            raise ModelNotReady("DEVICE=cuda but no CUDA GPU is visible to PyTorch (is the NVIDIA runtime set "
                                "up, and the gpu extra installed?)")
        if settings.backend not in ("auto", "torch"):
            raise ModelNotReady(f"BACKEND={settings.backend} runs on the CPU only; use DEVICE=cpu or BACKEND=torch")
        return "torch", "cuda"
    backend = "openvino" if settings.backend == "auto" else settings.backend
    return backend, "cpu"


def load_backend(settings: RuntimeSettings, folder: Path):
    """Construct the chosen backend over the export folder; logs the choice once."""
    backend, device = choose(settings)
    log.info("engine: backend=%s device=%s precision=%s folder=%s", backend, device, settings.precision, folder)
    check_export(folder, settings)  # missing, unfinished, truncated or mismatched: one plain ArtifactsMissing
    if backend == "openvino":
        from runtime.backends.openvino_backend import OpenVINOBackend
        return OpenVINOBackend(folder, settings)
    if backend == "onnxruntime":
        from runtime.backends.onnx_backend import OnnxBackend
        return OnnxBackend(folder, settings)
    from runtime.backends.torch_backend import TorchBackend
    return TorchBackend(folder, settings, device)

