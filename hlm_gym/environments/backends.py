"""Array backends of the step kernels: one kernel, three ways to run it.

A kernel (e.g. :mod:`hlm_gym.environments.hybrid_lm.kernel`) is written once against the small
set of operations below. :class:`ScalarOps` runs it on Python numbers (one environment, the
fast path of a single Gymnasium env), :class:`NumpyOps` on numpy arrays (a batch of
environments on the CPU) and :class:`TorchOps` on torch tensors (a batch on any torch device).
All three do the same float64 arithmetic in the same order, so a kernel gives bit-identical
trajectories on each (on the CPU).

Index arguments ``idx`` select environments of a batch (an index array, or ``slice(None)`` for
all of them); :class:`ScalarOps` has one environment and ignores them.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = ["ScalarOps", "NumpyOps", "TorchOps", "ALL"]

#: ``idx`` meaning "every environment of the batch"
ALL = slice(None)


class ScalarOps:
    """Python scalars: one environment, no arrays on the hot path.

    1-D tables are read through ``memoryview`` (indexing gives Python floats, ints and bools
    without copying the arrays); the element-wise operations are Python builtins.
    """

    batched = False

    # ------------------------------------------------------------------ tables
    @staticmethod
    def table(values: np.ndarray, kind: str = "f") -> Any:
        """A lookup table: a ``memoryview`` of a 1-D array (Python scalars on indexing), a 2-D array as is."""
        arr = np.ascontiguousarray(values)
        return memoryview(arr) if arr.ndim == 1 else arr

    take = staticmethod(operator.getitem)  # table[i] as a Python scalar

    @staticmethod
    def records(values: np.ndarray) -> np.ndarray:
        """A table of records: a C-ordered ``(rows, fields)`` float64 array."""
        return np.ascontiguousarray(values, dtype=np.float64)

    @staticmethod
    def take_records(table: np.ndarray, i: int) -> list:
        """Record ``i`` as a list of Python floats."""
        return table[i].tolist()

    @staticmethod
    def fields(records: list) -> list:
        """The fields of a record (as they are)."""
        return records
    take_rows = staticmethod(operator.getitem)  # row i of a 2-D table
    from_host = staticmethod(int)  # a host (numpy) integer as a Python int

    # ------------------------------------------------------------------ element-wise
    @staticmethod
    def where(c: Any, a: Any, b: Any) -> Any:
        return a if c else b

    minimum = staticmethod(min)
    maximum = staticmethod(max)
    f64 = staticmethod(float)
    floor_int = staticmethod(int)  # floor of a non-negative float
    logical_not = staticmethod(operator.not_)

    # ------------------------------------------------------------------ state
    @staticmethod
    def zeros(n: int, kind: str = "i") -> Any:
        return 0.0 if kind == "f" else (False if kind == "b" else 0)

    @staticmethod
    def ring(n: int, width: int) -> list:
        return [0] * width

    @staticmethod
    def ring_swap(ring: list, i: int, value: int) -> int:
        """Store ``value`` at slot ``i`` of the ring; return what was there."""
        old = ring[i]
        ring[i] = value
        return old

    @staticmethod
    def ring_clear(ring: list, idx: Any) -> list:
        return [0] * len(ring)

    @staticmethod
    def assign(arr: Any, idx: Any, value: Any) -> Any:
        """``arr`` with the entries ``idx`` set to ``value`` (the whole value for a scalar)."""
        return value

    @staticmethod
    def gather(arr: Any, idx: Any) -> Any:
        return arr

    @staticmethod
    def put_row(obs: np.ndarray, idx: Any, head: Any, tail: tuple) -> None:
        """Fill one observation vector: ``head`` (an array) first, then the scalars of ``tail``.

        Element stores (about 60 ns each) beat a slice store from a tuple (about 700 ns), so a
        tail of up to five scalars is stored element by element without a loop.
        """
        k = len(head)
        obs[:k] = head
        n = len(tail)
        if n == 5:
            obs[k], obs[k + 1], obs[k + 2], obs[k + 3], obs[k + 4] = tail
        else:
            for j in range(n):
                obs[k + j] = tail[j]


class NumpyOps:
    """numpy arrays: a batch of environments on the CPU."""

    batched = True
    #: the array module (``einsum``, ``where``, ... with the same signatures as torch's)
    lib = np
    _DTYPES = {"f": np.float64, "i": np.int64, "b": np.bool_, "f32": np.float32}

    @staticmethod
    def amax(x: np.ndarray, axis: int) -> np.ndarray:
        """The maximum along ``axis``."""
        return np.max(x, axis=axis)

    def table(self, values: np.ndarray, kind: str = "f") -> np.ndarray:
        return np.ascontiguousarray(values, dtype=self._DTYPES[kind])

    @staticmethod
    def take(table: np.ndarray, i: np.ndarray) -> np.ndarray:
        return table.take(i)

    @staticmethod
    def records(values: np.ndarray) -> np.ndarray:
        """A table of records: a C-ordered ``(rows, fields)`` float64 array."""
        return np.ascontiguousarray(values, dtype=np.float64)

    @staticmethod
    def take_records(table: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Records ``i`` in one gather: a ``(len(i), fields)`` array."""
        return table.take(i, axis=0)

    @staticmethod
    def fields(records: np.ndarray) -> np.ndarray:
        """One array per field of ``(n, fields)`` records."""
        return records.T

    @staticmethod
    def take_rows(table: np.ndarray, i: np.ndarray) -> np.ndarray:
        return table.take(i, axis=0)

    @staticmethod
    def from_host(x: Any) -> np.ndarray:
        return np.asarray(x)

    where = staticmethod(np.where)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    logical_not = staticmethod(np.logical_not)

    @staticmethod
    def f64(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64)

    @staticmethod
    def f32(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)

    @staticmethod
    def floor_int(x: np.ndarray) -> np.ndarray:
        return x.astype(np.int64)

    def zeros(self, n: int, kind: str = "i") -> np.ndarray:
        return np.zeros(n, dtype=self._DTYPES[kind])

    @staticmethod
    def ring(n: int, width: int) -> np.ndarray:
        return np.zeros((n, width), dtype=np.int64)

    @staticmethod
    def ring_swap(ring: np.ndarray, i: np.ndarray, value: np.ndarray) -> np.ndarray:
        rows = np.arange(ring.shape[0])
        old = ring[rows, i]
        ring[rows, i] = value
        return old

    @staticmethod
    def ring_clear(ring: np.ndarray, idx: Any) -> np.ndarray:
        ring[idx] = 0
        return ring

    @staticmethod
    def assign(arr: np.ndarray, idx: Any, value: Any) -> np.ndarray:
        arr[idx] = value
        return arr

    @staticmethod
    def gather(arr: np.ndarray, idx: Any) -> np.ndarray:
        return arr[idx]

    @staticmethod
    def put_row(obs: np.ndarray, idx: Any, head: np.ndarray, tail: tuple) -> None:
        """Fill the observations ``idx``: the columns of ``head`` first, then one column per entry of ``tail``."""
        k = head.shape[1]
        obs[idx, :k] = head
        for j, v in enumerate(tail, k):
            obs[idx, j] = v


class TorchOps:
    """torch tensors on ``device``: a batch of environments on a CPU or a GPU."""

    batched = True

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.lib = torch  # the array module (einsum, where, ... as numpy's)
        self.device = torch.device(device)
        self._dtypes = {"f": torch.float64, "i": torch.int64, "b": torch.bool, "f32": torch.float32}

    def table(self, values: np.ndarray, kind: str = "f"):
        return self.torch.as_tensor(np.ascontiguousarray(values), device=self.device, dtype=self._dtypes[kind])

    @staticmethod
    def take(table, i):
        return table[i]

    def records(self, values: np.ndarray):
        """A table of records: a ``(rows, fields)`` float64 tensor."""
        return self.table(values, "f")

    @staticmethod
    def take_records(table, i):
        """Records ``i`` in one gather: a ``(len(i), fields)`` tensor."""
        return table[i]

    @staticmethod
    def fields(records):
        """One tensor per field of ``(n, fields)`` records."""
        return records.unbind(1)

    def from_host(self, x: Any):
        return self.torch.as_tensor(np.asarray(x), device=self.device)

    @staticmethod
    def take_rows(table, i):
        return table[i]

    def where(self, c, a, b):
        t = self.torch
        if not isinstance(a, t.Tensor):
            a = t.full_like(b, a) if isinstance(b, t.Tensor) else t.as_tensor(a, device=self.device)
        if not isinstance(b, t.Tensor):
            b = t.full_like(a, b)
        return t.where(c, a, b)

    def minimum(self, a, b: float):
        return self.torch.clamp_max(a, b)

    def amax(self, x, axis: int):
        """The maximum along ``axis``."""
        return self.torch.amax(x, dim=axis)

    def maximum(self, a, b):
        return self.torch.clamp_min(a, b) if not isinstance(b, self.torch.Tensor) else self.torch.maximum(a, b)

    def logical_not(self, x):
        return self.torch.logical_not(x)

    def f64(self, x):
        return x.to(self.torch.float64)

    def f32(self, x):
        return x.to(self.torch.float32)

    def floor_int(self, x):
        return x.to(self.torch.int64)

    def zeros(self, n: int, kind: str = "i"):
        return self.torch.zeros(n, dtype=self._dtypes[kind], device=self.device)

    def ring(self, n: int, width: int):
        return self.torch.zeros((n, width), dtype=self.torch.int64, device=self.device)

    def ring_swap(self, ring, i, value):
        rows = self.torch.arange(ring.shape[0], device=self.device)
        old = ring[rows, i]
        ring[rows, i] = value
        return old

    @staticmethod
    def ring_clear(ring, idx):
        ring[idx] = 0
        return ring

    @staticmethod
    def assign(arr, idx, value):
        arr[idx] = value
        return arr

    @staticmethod
    def gather(arr, idx):
        return arr[idx]

    def put_row(self, obs, idx, head, tail: tuple) -> None:
        """Fill the observations ``idx``: the columns of ``head`` first, then one column per entry of ``tail``."""
        k = head.shape[1]
        obs[idx, :k] = head
        for j, v in enumerate(tail, k):
            obs[idx, j] = v.to(obs.dtype) if isinstance(v, self.torch.Tensor) else v
