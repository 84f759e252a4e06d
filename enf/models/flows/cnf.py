"""Continuous normalizing flow on torchdiffeq: data at t = 0, latent at t = 1.

d/dt [xh, log_det, reg] = [f(t, xh), tr(df/dxh), |f|^2 + |e^T df/dxh|^2]. The trace is exact (one
vector-Jacobian product per coordinate), Hutchinson's estimate e^T (df/dxh) e with one probe e per solve
(Rademacher or Gaussian), or the field's own closed form. log p(x) = log p_base(z) + log_det.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch._functorch import config as functorch_config
from torchdiffeq import odeint, odeint_adjoint

from enf.config import NOISES, TRACES
from enf.errors import NumericalError
from enf.geometry import node_mask_like
from enf.models.networks.base import VectorField

#: The compiled exact trace holds every Jacobian row's intermediates at once; above this many coordinates
#: per sample (e.g. QM9's 29 x 9) the loop of backward passes is used instead.
EXACT_FUSED_MAX_DIM = 64
#: Eager graph-less exact traces of states up to this many elements (one QM9 molecule: 9 per atom, <= 261) take
#: all Jacobian rows from one vmap-ed backward pass: 2.4x faster there; on larger batches it is slower than the
#: loop (DW4 at 1000 samples 1.3x, LJ13 at 100 2x), which is then used.
EXACT_VMAP_MAX_ELEMENTS = 1024


def exact_divergence(fn: Callable[[Tensor], Tensor], xh: Tensor) -> tuple[Tensor, Tensor]:
    """fn(xh) and its exact divergence per sample, without a graph: every Jacobian row e_k^T J from one vmap-ed
    vector-Jacobian product, one batched backward pass instead of one per coordinate (compiled, it fuses)."""
    dxh, pullback = torch.func.vjp(fn, xh)
    k = xh[0].numel()
    basis = torch.eye(k, dtype=xh.dtype, device=xh.device).reshape(k, 1, *xh.shape[1:])
    (rows,) = torch.func.vmap(pullback)(basis.expand(k, *xh.shape))  # rows[k] = e_k^T J
    div = torch.diagonal(rows.reshape(k, xh.shape[0], k), dim1=0, dim2=2).sum(-1)
    return dxh.detach(), div.detach()


def exact_trace(out: Tensor, inp: Tensor, create_graph: bool) -> Tensor:
    """sum_k d out_k / d inp_k per sample (B,), one backward pass per coordinate."""
    flat_out = out.reshape(out.shape[0], -1)
    trace = out.new_zeros(out.shape[0])
    for k in range(flat_out.shape[1]):
        grad = torch.autograd.grad(flat_out[:, k].sum(), inp, create_graph=create_graph, retain_graph=True)[0]
        trace = trace + grad.reshape(grad.shape[0], -1)[:, k]
    return trace


#: The divergence estimators of `AugmentedDynamics`, one of which `select_estimator` binds per solve and graph mode.
ESTIMATORS = ("fused_hutchinson", "fused_exact", "vmap_exact", "closed_form", "exact_loop", "hutchinson")


def select_estimator(trace: str, closed_form: bool, compiled: bool, keep_graph: bool, sample_numel: int,
                     total_numel: int) -> str:
    """The divergence estimator for a solve of states of `total_numel` elements (`sample_numel` per sample).

    Compiled fields fuse the field with its Hutchinson term (with or without a graph) or, without a graph and up to
    `EXACT_FUSED_MAX_DIM` coordinates per sample, with the exact trace; eager graph-less exact traces of small
    states take every Jacobian row from one vmap-ed pass; otherwise the field's closed form, the loop of
    backward passes (exact) or one vector-Jacobian product per evaluation (Hutchinson).
    """
    if compiled and not closed_form:
        if trace == "hutchinson":
            return "fused_hutchinson"
        if not keep_graph and trace == "exact" and sample_numel <= EXACT_FUSED_MAX_DIM:
            return "fused_exact"
    if not keep_graph and trace == "exact" and not closed_form and total_numel <= EXACT_VMAP_MAX_ELEMENTS:
        return "vmap_exact"
    if closed_form:
        return "closed_form"
    return "exact_loop" if trace == "exact" else "hutchinson"


class AugmentedDynamics(nn.Module):
    """The ODE function of the CNF: the field plus its divergence and the kinetic/Frobenius regulariser.

    `bind` makes the view of one solve and picks its divergence estimator there (`select_estimator`), once for
    evaluations with a graph and once without: the adjoint method evaluates one solve both ways (its forward
    solve without, its backward pass with a graph).
    """

    def __init__(self, field: VectorField, compile: bool = False) -> None:
        super().__init__()
        self.field = field
        self.compile = compile and field.compilable
        self._cache: dict[str, Any] = {}  # shared by every bound view, so the field compiles once
        self.mask: Tensor | None = None
        self.noise: Tensor | None = None
        self.trace = "hutchinson"
        self.regularize = False
        self.nfe = 0
        self.estimators: dict[bool, str] = {}

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        xh = state[0]
        self.nfe += 1
        keep_graph = torch.is_grad_enabled()
        name = self.estimators.get(keep_graph) or self.select(keep_graph, xh.shape)
        return _ESTIMATOR_METHODS[name](self, t, xh, keep_graph)

    def select(self, keep_graph: bool, shape: torch.Size | tuple[int, ...]) -> str:
        """The estimator (a name of `ESTIMATORS`) for states of `shape`, with or without a graph."""
        sample_numel = math.prod(shape[1:])
        return select_estimator(self.trace, self.field.closed_form_divergence, self.compile, keep_graph,
                                sample_numel, sample_numel * shape[0])

    def bind(self, mask: Tensor | None, noise: Tensor | None, trace: str, regularize: bool,
             shape: torch.Size | tuple[int, ...] | None = None) -> AugmentedDynamics:
        """A view for one solve of states of `shape` that shares the field, with its estimators chosen: the
        adjoint's backward pass of a solve must see that solve's mask and probe, even when other solves (e.g.
        groups of one batch) ran after it."""
        view = copy.copy(self)
        view.mask, view.noise, view.trace, view.regularize, view.nfe = mask, noise, trace, regularize, 0
        view.estimators = {} if shape is None else {graph: view.select(graph, shape) for graph in (True, False)}
        return view

    # -- the estimators: (t, xh, keep_graph) -> (dxh, div, reg) -------------------------------------------------
    def _fused_hutchinson(self, t: Tensor, xh: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Compiled field and Hutchinson term in one graph, with a graph (training) or without (evaluation)."""
        dxh, div, frob = self._fused()(t, xh if keep_graph else xh.detach(), self.noise, self.mask)
        reg = dxh.pow(2).flatten(1).sum(1) + frob if self.regularize else torch.zeros_like(div)
        if not keep_graph:
            dxh, div, reg = dxh.detach(), div.detach(), reg.detach()
        return dxh, div, reg

    def _fused_exact(self, t: Tensor, xh: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Compiled field and exact trace, without a graph."""
        dxh, div = self._fused_exact_fn()(t, xh, self.mask)
        return dxh, div, torch.zeros_like(div)

    def _vmap_exact(self, t: Tensor, xh: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Eager exact trace from one vmap-ed vector-Jacobian product, without a graph."""
        with torch.enable_grad():
            dxh, div = exact_divergence(lambda y: self.field(t, y, self.mask), xh.detach())
        return dxh, div, torch.zeros_like(div)

    def _closed_form(self, t: Tensor, xh: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        return self._autograd(t, xh, keep_graph, lambda dxh, y: (self.field.divergence(t, y, self.mask), None))

    def _exact_loop(self, t: Tensor, xh: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        return self._autograd(t, xh, keep_graph, lambda dxh, y: (exact_trace(dxh, y, create_graph=keep_graph), None))

    def _hutchinson(self, t: Tensor, xh: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
        def estimate(dxh: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
            e_jac = torch.autograd.grad(dxh, y, self.noise, create_graph=keep_graph)[0]
            frob = e_jac.pow(2).flatten(1).sum(1) if self.regularize else None
            return (e_jac * self.noise).flatten(1).sum(1), frob

        return self._autograd(t, xh, keep_graph, estimate)

    def _autograd(self, t: Tensor, xh: Tensor, keep_graph: bool,
                  divergence: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor,
                                                                                                  Tensor]:
        """Eager field, its divergence by `divergence(dxh, xh) -> (div, Frobenius term or None)`, regulariser."""
        with torch.enable_grad():
            if not keep_graph or not xh.requires_grad:  # the adjoint's forward solve passes graph-less states
                xh = xh.detach().requires_grad_(True)
            dxh = self.field(t, xh, self.mask)
            div, frob = divergence(dxh, xh)
            if self.regularize:
                if frob is None:  # exact or closed-form trace: Frobenius norm still by one probe
                    e_jac = torch.autograd.grad(dxh, xh, self.noise, create_graph=keep_graph)[0]
                    frob = e_jac.pow(2).flatten(1).sum(1)
                reg = dxh.pow(2).flatten(1).sum(1) + frob
            else:
                reg = torch.zeros_like(div)
        if not keep_graph:
            dxh, div, reg = dxh.detach(), div.detach(), reg.detach()
        return dxh, div, reg

    def _fused(self) -> Any:
        """torch.compile of (field, Hutchinson term) in one graph: about 2-3x faster per training evaluation.

        Compiling the field alone fails at backward (no double backward in aot_autograd); a function that
        returns the velocity and its vector-Jacobian product from torch.func.vjp compiles. The first compile
        takes minutes on 2 cores; set TORCHINDUCTOR_CACHE_DIR to keep it between runs.
        """
        if "fused" not in self._cache:
            field = self.field

            def fused(t: Tensor, xh: Tensor, e: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
                dxh, pullback = torch.func.vjp(lambda y: field(t, y, mask), xh)
                (e_jac,) = pullback(e)
                return dxh, (e_jac * e).flatten(1).sum(1), e_jac.pow(2).flatten(1).sum(1)

            # The adjoint differentiates each evaluation with retain_graph=True, which the compiled backward's
            # donated buffers forbid; the setting is process-wide and read when the backward runs.
            functorch_config.donated_buffer = False
            self._cache["fused"] = torch.compile(fused)
        return self._cache["fused"]

    def _fused_exact_fn(self) -> Any:
        """torch.compile of (field, exact trace) for evaluation without a graph: all rows e_k^T J of the Jacobian
        from one vmap-ed vector-Jacobian product instead of a Python loop of backward passes."""
        if "exact" not in self._cache:
            field = self.field

            def fused_exact(t: Tensor, xh: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
                return exact_divergence(lambda y: field(t, y, mask), xh)

            self._cache["exact"] = torch.compile(fused_exact)
        return self._cache["exact"]


_ESTIMATOR_METHODS: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    "fused_hutchinson": AugmentedDynamics._fused_hutchinson, "fused_exact": AugmentedDynamics._fused_exact,
    "vmap_exact": AugmentedDynamics._vmap_exact, "closed_form": AugmentedDynamics._closed_form,
    "exact_loop": AugmentedDynamics._exact_loop, "hutchinson": AugmentedDynamics._hutchinson}


class CNF(nn.Module):
    """A continuous normalizing flow around a `VectorField`, integrated with an adaptive torchdiffeq solver."""

    def __init__(self, field: VectorField, method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-4,
                 adjoint: bool = False, trace: str = "hutchinson", noise: str = "rademacher",
                 regularization: float = 0.0, options: dict[str, Any] | None = None,
                 compile: bool = False) -> None:
        super().__init__()
        if trace not in TRACES:
            raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        self.dynamics = AugmentedDynamics(field, compile=compile)
        self.method, self.rtol, self.atol = method, rtol, atol
        self.adjoint = adjoint
        self.trace = trace
        self.noise = noise
        self.regularization = regularization
        self.options = dict(options or {})
        self.last_nfe = 0

    @property
    def field(self) -> VectorField:
        return self.dynamics.field

    def _probe(self, xh: Tensor, mask: Tensor | None) -> Tensor:
        if self.noise == "gaussian":
            e = torch.randn_like(xh)
        else:
            e = torch.randint(0, 2, xh.shape, device=xh.device).to(xh.dtype) * 2 - 1
        return e * node_mask_like(xh, mask)

    def _solve(self, func: nn.Module, y0: Any, times: Tensor) -> Any:
        solver = odeint_adjoint if (self.adjoint and torch.is_grad_enabled()) else odeint
        kwargs: dict[str, Any] = {"rtol": self.rtol, "atol": self.atol, "method": self.method}
        if self.options:
            kwargs["options"] = self.options
        try:
            return solver(func, y0, times, **kwargs)
        except AssertionError as err:  # torchdiffeq signals a collapsed step size this way
            if "underflow" in str(err):
                raise NumericalError(f"ODE solver step size underflow ({err}); the dynamics are too stiff "
                                     "or diverged") from None
            if "max_num_steps" in str(err):
                raise NumericalError(f"ODE solve exploded: {err}") from None
            raise

    def forward(self, xh: Tensor, mask: Tensor | None = None, trace: str | None = None) -> tuple[Tensor, Tensor,
                                                                                                    Tensor]:
        """Encode: integrate data xh (t=0) to latent z (t=1); return z, log|det dz/dx| (B,) and reg (B,)."""
        trace = trace or self.trace
        regularize = self.regularization > 0 and torch.is_grad_enabled()
        dyn = self.dynamics.bind(mask, self._noise_for(xh, mask, trace, regularize), trace, regularize, xh.shape)
        zeros = xh.new_zeros(xh.shape[0])
        times = torch.tensor([0.0, 1.0], dtype=xh.dtype, device=xh.device)
        zt, logdet, reg = self._solve(dyn, (xh, zeros, zeros.clone()), times)
        self.last_nfe = dyn.nfe
        return zt[-1], logdet[-1], reg[-1]

    def _noise_for(self, xh: Tensor, mask: Tensor | None, trace: str, regularize: bool) -> Tensor | None:
        """The solve's Hutchinson probe, or None when neither the trace nor the regulariser needs one."""
        needs_probe = regularize or (trace == "hutchinson" and not self.field.closed_form_divergence)
        return self._probe(xh, mask) if needs_probe else None

    @torch.no_grad()
    def decode_with_logdet(self, z: Tensor, mask: Tensor | None = None,
                           trace: str | None = None) -> tuple[Tensor, Tensor]:
        """Invert z (t=1) to x (t=0) together with log|det dz/dx| from the same solve (the field's divergence
        integrated along the path), so that log q(x) = log p(z) + log_det without a second, forward solve."""
        trace = trace or self.trace
        dyn = self.dynamics.bind(mask, self._noise_for(z, mask, trace, False), trace, False, z.shape)
        zeros = z.new_zeros(z.shape[0])
        times = torch.tensor([1.0, 0.0], dtype=z.dtype, device=z.device)
        xs, acc, _ = self._solve(dyn, (z, zeros, zeros.clone()), times)
        self.last_nfe = dyn.nfe
        # d acc/dt = div f integrated from t=1 down to t=0 gives acc = -int_0^1 div f dt = -log_det
        return xs[-1], -acc[-1]

    @torch.no_grad()
    def decode(self, z: Tensor, mask: Tensor | None = None) -> Tensor:
        """Invert: integrate latent z (t=1) back to data (t=0) with the field alone."""
        field = self.field
        nfe = 0

        def func(t: Tensor, xh: Tensor) -> Tensor:
            nonlocal nfe
            nfe += 1
            return field(t, xh, mask)

        times = torch.tensor([1.0, 0.0], dtype=z.dtype, device=z.device)
        out = self._solve(_Func(func), z, times)[-1]
        self.last_nfe = nfe
        return out


class _Func(nn.Module):
    """Wrap a closure as a module (torchdiffeq wants a callable; the adjoint wants a module)."""

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.fn(t, y)
