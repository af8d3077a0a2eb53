"""The optional compiled training loss (`compile: true`): torch.compile, or eager when it cannot be had.

The loss function (forward, and through AOTAutograd its backward) runs as a few generated kernels
instead of hundreds of small eager ops. Given the same random numbers, compiled losses match eager
ones up to the rounding of fused arithmetic (not bit for bit). The random numbers themselves are
drawn differently: the compiled graph takes its seeds from the global RNG but does not consume it
as the eager ops do (measured even with inductor's `fallback_random`), so a compiled run and an
eager run of one cell are two different samples of the same training. Both seeds live in the
checkpointed RNG state, so a resumed compiled run repeats the uninterrupted compiled one on the
same machine, torch version and thread count.

Random numbers inside the graph come from aten's own generators (inductor's `fallback_random`):
inductor's CPU kernels otherwise draw them one element at a time (Philox per element), which took
1.45 ms of the default cell's ~16 ms compiled step for the diffusion loss's noise alone; with aten's
vectorised `randn` the compiled forward took 1.16 ms less (the step 16.95 -> 15.95 ms, CPU, 1 thread).

When torch.compile is unavailable (no C++ compiler for the CPU backend, a platform dynamo does not
support, an op it cannot trace) the first call says so in one line and training runs eager.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

# inductor settings of the compiled loss (see the module docstring)
INDUCTOR_OPTIONS = {"fallback_random": True}


def _compile_unavailable() -> str | None:
    """Why torch.compile cannot run here, or None when it may."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support this platform (Python {sys.version.split()[0]})"
    return None


def _warn(why: str, what: str) -> None:
    print(f"warning: compile: true, but {why}; {what} runs eager (the same results, slower).", file=sys.stderr)


class CompiledOrEager:
    """`fn` compiled by torch.compile; `fn` itself when compiling is unavailable or its first call fails."""

    def __init__(self, fn: Callable, what: str):
        self.fn = fn
        self.what = what
        self._compiled: Callable | None = None
        self._proven = False  # the compiled function has run once
        why = _compile_unavailable()
        if why is not None:
            _warn(why, what)
            return
        self._compiled = torch.compile(fn, options=INDUCTOR_OPTIONS)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.fn(*args, **kwargs)
        if self._proven:
            return self._compiled(*args, **kwargs)
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as err:  # compilation raises many types (missing compiler, unsupported op, ...)
            _warn(f"torch.compile failed ({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]})", self.what)
            self._compiled = None
            torch.set_rng_state(rng)  # the failed attempt may have drawn numbers: the eager call draws them again
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            return self.fn(*args, **kwargs)
        self._proven = True
        return out
