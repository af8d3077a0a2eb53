"""Count the places where code reads a tensor's value back to the host: on a GPU each one waits for
every kernel queued before it (a synchronisation), so a training step should have none.

Two layers, because neither sees everything on a CPU machine:
- the dispatcher (TorchDispatchMode): every scalar read (`.item()`, `bool(t)`, `float(t)`, `if t:`,
  also from inside torch's own Python or C++ code) is `aten._local_scalar_dense`, and ops whose
  output size depends on values (`nonzero`, boolean-mask indexing, `unique`) must read them too;
- the Python API (TorchFunctionMode): copies to host memory (`.cpu()`, `.numpy()`, `.tolist()`,
  `.to("cpu")`), which on a CPU tensor are no-ops the dispatcher never sees.
"""

from __future__ import annotations

from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read device values: scalars, and outputs sized by the data
READING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique", "_unique2", "unique_consecutive",
               "unique_dim", "equal", "is_nonzero", "argwhere", "nonzero_static"}
# Python-level copies to host memory
HOST_COPIES = {"cpu", "numpy", "tolist", "__array__"}


def _to_host(name: str, args, kwargs) -> bool:
    """`.to("cpu")` written out. A torch.device target is left alone: on a CPU machine `.to(x.device)`
    (clip_grad_norm_ gathering norms on the gradients' device) looks the same and is no host copy on a GPU."""
    if name != "to":
        return False
    return any(isinstance(t, str) and t.startswith("cpu") for t in [*args[1:], kwargs.get("device")])


class _FunctionLayer(TorchFunctionMode):
    def __init__(self, reads: list):
        super().__init__()
        self.reads = reads

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_COPIES or _to_host(name, args, kwargs):
            self.reads.append(name)
        return func(*args, **kwargs)


class _DispatchLayer(TorchDispatchMode):
    def __init__(self, reads: list):
        super().__init__()
        self.reads = reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in READING_OPS:
            self.reads.append(f"aten.{name}")
        return func(*args, **(kwargs or {}))


class HostReads:
    """`with HostReads() as reads: ...` then `reads.names`: what was read back, in order."""

    def __init__(self):
        self.names: list[str] = []
        self._layers = (_FunctionLayer(self.names), _DispatchLayer(self.names))

    def __enter__(self) -> HostReads:
        for layer in self._layers:
            layer.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for layer in reversed(self._layers):
            layer.__exit__(*exc)
