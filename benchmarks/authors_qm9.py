"""The authors' QM9 E-NF (vgsatorras/en_flows) with their released weights, run by their own code, for benchmarks.

Nothing of theirs is vendored: pass the folder of a checkout (e.g. `git clone https://github.com/vgsatorras/en_flows`).
Their `qm9/models.py:get_model` builds the prior, the flow (ActNorm + FFJORD around `EGNN_dynamics_QM9`), the
argmax + variational dequantiser and p(M) from the stored training arguments; their `qm9/losses.py:
compute_loss_and_nll` computes the batch's NLL as their test loop does (`main_qm9.py` / `eval_analyze_qm9.py`:
`torch.no_grad()`, float32, the flow left in training mode, so dopri5 at rtol = atol = 1e-4, one Gaussian
Hutchinson probe per solve). That function returns only the batch mean; the per-molecule terms are read off their
modules with forward hooks while it runs, and their mean is checked against its return value.

Their `qm9/analyze.py` (imported by `qm9/models.py` for the size histogram) imports their dataset module, which
pulls in the download and preprocessing code: it is replaced by an empty module, as nothing here loads data.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "resources" / "pretrained" / "en_flows_qm9"
#: Their files that building and evaluating the QM9 model needs (all imported from the checkout).
NEEDED = ("qm9/__init__.py", "qm9/models.py", "qm9/losses.py", "qm9/analyze.py", "flows/__init__.py",
          "flows/ffjord.py", "flows/dequantize.py", "flows/actnorm.py", "flows/distributions.py", "flows/utils.py",
          "egnn/models.py", "egnn/gcl.py")
#: Their top-level package names, which must come from the checkout and nowhere else.
PACKAGES = ("qm9", "flows", "egnn")
TRACES = {"hutchinson": "hutch", "hutch": "hutch", "exact": "exact"}


class AuthorsCheckoutError(RuntimeError):
    """The authors' checkout, their imports or the released files are missing or unusable."""


def _import_authors(path: str | Path) -> SimpleNamespace:
    """Their QM9 modules, imported from the checkout at `path`; refused with the missing file or module named."""
    root = Path(path).expanduser().resolve()
    missing = [f for f in NEEDED if not (root / f).is_file()]
    if missing:
        raise AuthorsCheckoutError(f"{root}: not a usable checkout of vgsatorras/en_flows; missing "
                                   + ", ".join(missing))
    for name in PACKAGES:  # their egnn/ has no __init__.py: a namespace package, known by its __path__
        mod = sys.modules.get(name)
        where = [Path(p).resolve() for p in getattr(mod, "__path__", [])] if mod is not None else []
        if mod is not None and root / name not in where:
            raise AuthorsCheckoutError(f"a module {name!r} from {[str(p) for p in where] or mod!r} is already "
                                       f"imported; their {name}/ from {root} cannot be loaded beside it")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import qm9  # type: ignore[import-not-found]

        if "qm9.dataset" not in sys.modules:  # their data pipeline: downloads and preprocessing, not needed here
            stub = types.ModuleType("qm9.dataset")
            stub.__doc__ = "stand-in for the authors' qm9/dataset.py (benchmarks/authors_qm9.py loads no data)"
            sys.modules["qm9.dataset"] = stub
            qm9.dataset = stub
        from flows import dequantize  # type: ignore[import-not-found]
        from qm9 import losses  # type: ignore[import-not-found]
        from qm9.models import get_model  # type: ignore[import-not-found]
    except ModuleNotFoundError as err:
        raise AuthorsCheckoutError(f"importing the authors' QM9 code from {root} needs the module {err.name!r}, "
                                   f"which is not installed ({err})") from err
    return SimpleNamespace(root=root, get_model=get_model, losses=losses, dequantize=dequantize)


def _read_release(release: Path) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
    """The released flow and dequantiser state dicts and the training arguments."""
    files = [release / name for name in ("flow.pt", "dequantizer.pt", "args.json")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise AuthorsCheckoutError("released QM9 weights not found: " + ", ".join(missing))
    flow = torch.load(files[0], map_location="cpu", weights_only=True)
    dequantizer = torch.load(files[1], map_location="cpu", weights_only=True)
    return flow, dequantizer, json.loads(files[2].read_text())


@contextlib.contextmanager
def _captured(mod: SimpleNamespace, model: AuthorsQM9, eps: Tensor | None,
              probe: Tensor | None) -> Iterator[dict[str, Any]]:
    """Record the per-molecule terms of their loss while it runs; optionally fix their two noises.

    `eps` replaces their dequantiser's Gaussian draw (`flows.dequantize.sample_gaussian_with_mask`) and `probe`
    their Hutchinson probe (`ODEfunc._eps`, set in `before_odeint`); both are restored afterwards.
    """
    seen: dict[str, Any] = {}
    hooks = [
        model.dequantizer.register_forward_hook(lambda m, i, out: seen.__setitem__("log_q", out[1])),
        model.flow.register_forward_hook(lambda m, i, out: seen.update(delta_logp=out[1], reg=out[2], z=out[0])),
        model.prior.register_forward_hook(lambda m, i, out: seen.__setitem__("log_pz", out)),
    ]
    log_prob = model.nodes_dist.log_prob

    def logged_log_prob(n_nodes: Tensor) -> Tensor:
        seen["log_pN"] = log_prob(n_nodes)
        return seen["log_pN"]

    model.nodes_dist.log_prob = logged_log_prob
    sampler = mod.dequantize.sample_gaussian_with_mask
    if eps is not None:
        mod.dequantize.sample_gaussian_with_mask = lambda size, device, node_mask: eps.to(node_mask) * node_mask
    odefunc = model.ffjord.odefunc
    before = odefunc.before_odeint
    if probe is not None:
        def fixed(tensor: Tensor) -> None:
            before(tensor)
            odefunc._eps = probe.to(tensor)

        odefunc.before_odeint = fixed
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()
        del model.nodes_dist.log_prob
        mod.dequantize.sample_gaussian_with_mask = sampler
        if probe is not None:
            del odefunc.before_odeint


class AuthorsQM9:
    """Their QM9 model (prior, flow, dequantiser, p(M)) with the released weights, evaluated by their own code."""

    def __init__(self, checkout: str | Path, release: str | Path = RELEASE, dtype: torch.dtype = torch.float32,
                 quiet: bool = True) -> None:
        self.mod = _import_authors(checkout)
        flow_state, deq_state, args = _read_release(Path(release))
        self.args = SimpleNamespace(**args)
        self.args.cuda = False
        self.dtype = dtype
        with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stdout):  # their p(M) prints its entropy
            self.prior, self.flow, self.dequantizer, self.nodes_dist = self.mod.get_model(self.args, "cpu")
        self.flow.load_state_dict(flow_state)
        self.dequantizer.load_state_dict(deq_state)
        self.flow.to(dtype)
        self.dequantizer.to(dtype)
        # Their test loops never call .eval(): FFJORD then solves at its training tolerances (1e-4), not 1e-7.
        self.flow.train()
        self.dequantizer.train()
        self.ffjord = self.flow.transformations[-1]
        self.regularization = self.ffjord.odefunc.ode_regularization

    def inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor, Tensor]:
        """enf's batch (positions, mask, one_hot, charges) as their test loop feeds it: padding columns that no
        molecule uses dropped (their collate), centred positions, the diagonal-free edge mask."""
        from flows.utils import remove_mean_with_mask  # type: ignore[import-not-found]

        mask = batch["mask"].bool()
        keep = mask.any(0)
        mask = mask[:, keep]
        node_mask = mask.to(self.dtype).unsqueeze(2)
        x = batch["positions"][:, keep].to(self.dtype) * node_mask
        x = remove_mean_with_mask(x, node_mask)
        one_hot = batch["one_hot"][:, keep].to(self.dtype) * node_mask
        charges = batch["charges"][:, keep].to(self.dtype).unsqueeze(2) * node_mask
        n = mask.shape[1]
        edges = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(n, dtype=torch.bool).unsqueeze(0)
        edge_mask = edges.reshape(-1, 1).to(self.dtype)
        return x, {"categorical": one_hot, "integer": charges}, node_mask, edge_mask, keep

    def nll(self, batch: dict[str, Tensor], trace: str = "hutch", eps: Tensor | None = None,
            probe: Tensor | None = None, regularize: bool | None = None) -> dict[str, Any]:
        """Per-molecule NLL (B,) of an enf batch by their `compute_loss_and_nll`, its terms, their batch mean and
        the function evaluations of the solve.

        `eps` (B, N, 6) fixes the dequantiser's noise and `probe` (B, N, 9) the Hutchinson probe (both in enf's
        padded width). `regularize` None does what their test loop does: with the released arguments
        (ode_regularization 1e-3) the Frobenius + kinetic term is integrated beside the NLL even at test time,
        and enters the solver's error control (more steps); it does not change the NLL's formula. It is off for
        `trace="exact"` (their exact trace would still need a probe for it)."""
        method = TRACES.get(trace)
        if method is None:
            raise ValueError(f"trace must be one of {sorted(TRACES)}, got {trace!r}")
        if regularize is None:
            regularize = method == "hutch"
        if regularize and method == "exact":
            raise ValueError("their exact trace cannot integrate the regulariser (it needs a Hutchinson probe)")
        x, h, node_mask, edge_mask, keep = self.inputs(batch)
        self.flow.set_trace(method)
        self.ffjord.odefunc.ode_regularization = self.regularization if regularize else 0
        eps = eps[:, keep] if eps is not None else None
        probe = probe[:, keep] if probe is not None else None
        with torch.no_grad(), _captured(self.mod, self, eps, probe) as seen:
            batch_nll, _, _ = self.mod.losses.compute_loss_and_nll(self.args, self.dequantizer, self.flow, self.prior,
                                                                   self.nodes_dist, x, h, node_mask, edge_mask, None)
        nll = -(seen["log_pz"] + seen["delta_logp"] - seen["log_q"] + seen["log_pN"].to(self.dtype))
        if not torch.allclose(nll.mean(), batch_nll, rtol=1e-5, atol=1e-4):
            raise RuntimeError(f"per-molecule terms (mean {float(nll.mean()):.6f}) do not give their batch NLL "
                               f"{float(batch_nll):.6f}: the hooks no longer see what their loss uses")
        return {"nll": nll, "log_pz": seen["log_pz"], "delta_logp": seen["delta_logp"], "log_q": seen["log_q"],
                "log_pN": seen["log_pN"], "reg": seen["reg"], "batch_nll": float(batch_nll),
                "nfe": int(self.ffjord.odefunc.num_evals)}


def evaluation_step(checkout: str | Path, batches: list[dict[str, Tensor]], seed: int = 0,
                    release: str | Path = RELEASE) -> Callable[[], dict[str, Any]]:
    """A callable that evaluates all `batches` with their code (Hutchinson, as their test loop) and returns the
    per-molecule NLL (concatenated) and the mean function evaluations per solve; seeded the same on every call."""
    model = AuthorsQM9(checkout, release)

    def step() -> dict[str, Any]:
        torch.manual_seed(seed)
        outs = [model.nll(b, "hutch") for b in batches]
        return {"nll": torch.cat([o["nll"].double() for o in outs]),
                "nfe_per_solve": sum(o["nfe"] for o in outs) / len(outs)}

    return step
