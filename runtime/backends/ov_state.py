"""Reading and writing the stateful language model's KV state (one state per layer and K/V)."""
from __future__ import annotations

import mmap
from collections.abc import Mapping

import numpy as np


class StateWriter:
    """Sets KV states of one infer request without the plugin keeping an f32 copy of them resident.

    The CPU plugin converts a state it is given into its own (u8) memory at once, then keeps the tensor it was
    given until that state is set again ("to extend its lifetime"): an f32 copy of every KV it was ever given,
    ~0.23 MB a position. So the f32 data is written into an anonymous mapping of its own, shared with the
    tensor, whose pages are given back to the kernel (MADV_DONTNEED) once the plugin has converted them; the
    mapping stays alive (zero pages if ever read) until the state is set again.
    """

    def __init__(self):
        self._held: dict[str, mmap.mmap] = {}  # state name -> the mapping its last tensor points into

    @staticmethod
    def buffer(shape: tuple, dtype=np.float32) -> tuple[np.ndarray, mmap.mmap]:
        """A zero-filled array in a mapping of its own (fill it, then pass both to set())."""
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = mmap.mmap(-1, max(size, 1))
        return np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape), buf

    def set(self, state, array: np.ndarray, buf: mmap.mmap) -> None:
        """state.state = array (made by buffer()), then release the pages the plugin no longer reads."""
        import openvino as ov

        state.state = ov.Tensor(array, shared_memory=True)
        buf.madvise(mmap.MADV_DONTNEED)
        self._held[state.name] = buf  # replaces (and frees) the one the plugin held before

    def copy_in(self, state, array: np.ndarray) -> None:
        """Set state to a copy of array (any float dtype)."""
        out, buf = self.buffer(array.shape)
        out[...] = array
        self.set(state, out, buf)


class StateReader(Mapping):
    """An infer request's KV state as a mapping, each layer converted to f32 when read."""

    def __init__(self, request):
        self._states = {s.name: s for s in request.query_state()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._states[name].state.data

    def __iter__(self):
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)
