"""What the PyTorch strategies (``deep``, ``sequence``) share, so neither imports the other.

* device and threads: ``resolve_device``, ``usable_cores``, ``training_threads``;
* training: ``seeded`` (the seeding both use), ``epoch_budget`` (epochs cut by a budget of
  steps), ``Adam``;
* serving precision: ``PRECISIONS``, ``check_precision``, ``serving_precision`` (the fp16
  fallback), ``quantize_linear`` (dynamic int8), ``pin_row`` (a batch-independent int8 input
  range), ``state_dict_bytes``, ``scores_to_numpy``;
* ``ItemCosine``: similar items by cosine of an item-vector table;
* persistence: ``save_weights``/``load_weights`` (the fp32 ``state_dict`` as ``WEIGHTS_FILE``,
  tensors only, loaded with ``weights_only=True``: no pickle) and ``init_params`` (the saved
  hyperparameters with the load-time overrides).

The leading underscore keeps this module out of the strategy registry
(``strategies.STRATEGY_NAMES`` lists every other module of the package), as for ``_arrays``;
its names are public to the package's strategies and tests.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from strategies.base import top_n

WEIGHTS_FILE = "weights.pt"
PRECISIONS = ("fp32", "int8", "fp16")


# -- device and threads -----------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """The device a model is fitted and served on, chosen once per model.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when present, else the CPU), or any name ``torch.device`` takes.

    Returns
    -------
    torch.device
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one).

    Returns
    -------
    int
        At least 1.
    """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(os.cpu_count() or 1, 1)


@contextlib.contextmanager
def training_threads(n_threads: int | None = None) -> Iterator[int]:
    """Run the ``with`` block on ``n_threads`` torch threads, then restore the caller's count.

    Training is offline work: it may use every core, whatever the caller limited torch to for
    serving (a gunicorn worker runs one thread).

    Parameters
    ----------
    n_threads : int or None
        Threads for the block; ``None``: every usable core (``usable_cores()``).

    Yields
    ------
    int
        The number of threads the block runs on.
    """
    before = torch.get_num_threads()
    n = usable_cores() if n_threads is None else n_threads
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


# -- training ------------------------------------------------------------------------------------
def seeded(seed: int) -> tuple[torch.Generator, np.random.Generator]:
    """Seed torch's global generator (weight initialisation, dropout) and make the two
    generators a fit draws from, so one seed gives one model.

    Parameters
    ----------
    seed : int

    Returns
    -------
    gen : torch.Generator
        A CPU generator seeded with ``seed`` (input dropout, negative samples).
    rng : numpy.random.Generator
        ``np.random.default_rng(seed)`` (shuffling, held-out users).
    """
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed), np.random.default_rng(seed)


def epoch_budget(epochs: int, max_steps: int | None, steps_per_epoch: int) -> int:
    """``epochs``, cut to fit ``max_steps`` gradient steps, but never under one epoch.

    A budget of steps rather than of epochs bounds the fit time as the number of users grows
    (more users, more steps per epoch); README "## Deep model" has the measurements.

    Parameters
    ----------
    epochs : int
        Epochs at most.
    max_steps : int or None
        Gradient steps at most (whole epochs only); ``None`` or 0: no step budget.
    steps_per_epoch : int
        Steps in one epoch (0: no training data).

    Returns
    -------
    int
        ``epochs`` without a step budget or without steps, else
        ``max(1, min(epochs, max_steps // steps_per_epoch))``.
    """
    if not max_steps or steps_per_epoch <= 0:
        return epochs
    return max(1, min(epochs, max_steps // steps_per_epoch))


class Adam:
    """Adam (Kingma & Ba), the same update as ``torch.optim.Adam``'s defaults.

    Hand-written because constructing any ``torch.optim`` optimizer imports sympy (and part of
    ``torch._dynamo``'s machinery), a one-off cost as long as a whole small fit. The update
    runs as torch's fused multi-tensor Adam kernel (what ``torch.optim.Adam(fused=True)``
    calls), falling back to ``torch._foreach_*`` ops; README "## Deep model" has the timings.

    Parameters
    ----------
    params : list of torch.nn.Parameter
        The tensors to optimise (those without ``requires_grad`` are left out).
    lr : float
        Learning rate.
    weight_decay : float
        L2 penalty added to the gradient (``torch.optim.Adam``'s, not AdamW's).
    betas : tuple of float
        Decay rates of the first and second moment estimates.
    eps : float
        Added to the denominator.

    Attributes
    ----------
    fused : bool
        Whether ``step`` runs the fused kernel (set it to False for the ``_foreach`` path).
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32) for _ in self.params]
        self.t = 0
        self.fused = hasattr(torch, "_fused_adam_") and all(
            p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in self.params
        )

    def zero_grad(self) -> None:
        """Drop every parameter's gradient (``set_to_none``, as ``torch.optim`` does)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient. A row-sparse gradient (an
        ``embedding``/``embedding_bag`` with ``sparse=True``) updates only its rows and their
        moments ("lazy" Adam, as ``torch.optim.SparseAdam``): the other rows' moments are not
        decayed that step."""
        self.t += 1
        sparse = [i for i, p in enumerate(self.params) if p.grad is not None and p.grad.is_sparse]
        for i in sparse:
            self._sparse_step(i)
        live = [i for i, p in enumerate(self.params) if p.grad is not None and not p.grad.is_sparse]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [self.params[i].grad for i in live]
        ms = [self.m[i] for i in live]
        vs = [self.v[i] for i in live]
        b1, b2 = self.betas
        if self.fused:
            steps = [self.steps[i].to(self.params[i].device) for i in live]
            for i, st in zip(live, steps, strict=True):
                st.fill_(self.t)
                self.steps[i] = st
            torch._fused_adam_(
                params, grads, ms, vs, [], steps,
                lr=self.lr, beta1=b1, beta2=b2, weight_decay=self.weight_decay,
                eps=self.eps, amsgrad=False, maximize=False,
            )  # fmt: skip
            return
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        bc1 = 1.0 - b1**self.t
        bc2 = 1.0 - b2**self.t
        torch._foreach_lerp_(ms, grads, 1.0 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, math.sqrt(bc2))
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, ms, denom, value=-self.lr / bc1)

    def _sparse_step(self, i: int) -> None:
        """Adam on the rows a sparse gradient touches (duplicate rows summed first)."""
        p, m, v = self.params[i], self.m[i], self.v[i]
        grad = p.grad.coalesce()
        rows, g = grad.indices()[0], grad.values()
        if self.weight_decay:
            g = g + self.weight_decay * p[rows]
        b1, b2 = self.betas
        m_r = m[rows].lerp_(g, 1.0 - b1)
        v_r = v[rows].mul_(b2).addcmul_(g, g, value=1.0 - b2)
        m[rows], v[rows] = m_r, v_r
        denom = v_r.sqrt_().div_(math.sqrt(1.0 - b2**self.t)).add_(self.eps)
        p.index_add_(0, rows, m_r.div_(denom), alpha=-self.lr / (1.0 - b1**self.t))


# -- serving precision ------------------------------------------------------------------------
def check_precision(precision: str) -> str:
    """``precision`` if it is one of ``PRECISIONS``.

    Parameters
    ----------
    precision : str

    Returns
    -------
    str
        ``precision``, unchanged.

    Raises
    ------
    ValueError
        For any other value.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def serving_precision(
    precision: str, device: torch.device, name: str, logger: logging.Logger
) -> str:
    """The precision a model is served in: ``precision``, but fp32 for fp16 without CUDA.

    Parameters
    ----------
    precision : str
        The requested precision, one of ``PRECISIONS``.
    device : torch.device
        Where the fp32 model lives.
    name : str
        The strategy's name, for the warning.
    logger : logging.Logger
        Where the fallback is reported (the strategy's own logger).

    Returns
    -------
    str
    """
    if precision == "fp16" and device.type != "cuda":
        logger.warning("%s: fp16 needs CUDA; serving fp32 on %s", name, device)
        return "fp32"
    return precision


def quantize_linear(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` dynamically quantized to int8.

    The quantized kernels are CPU kernels; ``module`` must be on the CPU. Its fp32 layers stay
    as they are.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    torch.nn.Module
    """
    with warnings.catch_warnings():
        # torch >= 2.10 flags the torch.ao quantized-tensor API as deprecated in favour of
        # torchao; it still works, and it needs no extra dependency.
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def pin_row(width: int, bound: float = 1.0) -> torch.Tensor:
    """The extra input row that makes a dynamically quantized layer batch-independent.

    A dynamic int8 layer quantizes its input with the minimum and maximum of the whole batch,
    so one user's scores would depend on who else is in the batch. Appending this row (and
    dropping its output) pins the range to ``[-bound, bound]`` for any batch whose values lie
    inside it.

    Parameters
    ----------
    width : int
        The layer's input width.
    bound : float
        The range's half-width.

    Returns
    -------
    torch.Tensor
        ``(1, width)`` float32 zeros, ``bound`` first and ``-bound`` last, on the CPU.
    """
    row = torch.zeros(1, width)
    row[0, 0], row[0, -1] = bound, -bound
    return row


def state_dict_bytes(module: nn.Module) -> int:
    """Serialized size of a module's ``state_dict`` (what a saved module would occupy).

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    int
        Bytes.
    """
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def scores_to_numpy(scores: torch.Tensor) -> np.ndarray:
    """Scores as a float32 numpy array on the CPU (no copy when they already are).

    Parameters
    ----------
    scores : torch.Tensor
        Any floating dtype, any device.

    Returns
    -------
    numpy.ndarray
        float32.
    """
    if scores.dtype != torch.float32 or scores.device.type != "cpu":
        scores = scores.float().cpu()
    return scores.numpy()


# -- similar items ------------------------------------------------------------------------------
class ItemCosine:
    """Similar items by cosine of item vectors, normalised once per weight tensor.

    A strategy keeps one per fitted model: normalising the table on every call would cost most
    of a similar-items call. The table is renormalised when another tensor is passed (new
    weights).

    Parameters
    ----------
    first_row : int
        Rows of the weight tensor before this one are not items (a padding row).
    """

    def __init__(self, first_row: int = 0) -> None:
        self.first_row = first_row
        self.weight: torch.Tensor | None = None
        self.unit: torch.Tensor | None = None

    def similar_items(
        self, weight: torch.Tensor, items: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n items by cosine of the item vectors ``weight[first_row:]``, the item excluded.

        Parameters
        ----------
        weight : torch.Tensor
            ``(first_row + n_items, d)`` item vectors, any device and floating dtype.
        items : numpy.ndarray
            Query item indices.
        n : int
            Neighbours per query item.

        Returns
        -------
        ids : numpy.ndarray
            ``(len(items), n)`` int64 item indices.
        scores : numpy.ndarray
            ``(len(items), n)`` float32 cosines.
        """
        items = np.asarray(items, dtype=np.int64)
        with torch.inference_mode():
            if self.unit is None or self.weight is not weight:
                self.weight = weight
                self.unit = F.normalize(weight.detach()[self.first_row :].float(), dim=1)
            emb = self.unit
            q = emb[torch.from_numpy(items).to(emb.device)]
            sims = (q @ emb.t()).cpu().numpy().astype(np.float32)
        sims[np.arange(len(items)), items] = -np.inf
        return top_n(sims, n)


# -- persistence --------------------------------------------------------------------------------
def save_weights(model: nn.Module, path: str) -> None:
    """Write ``model``'s fp32 weights to ``path/WEIGHTS_FILE``: on the CPU, tensors only.

    Loadable with ``weights_only=True`` anywhere; the serving precision is derived on load.

    Parameters
    ----------
    model : torch.nn.Module
    path : str
        The model directory (created if needed).
    """
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(path, WEIGHTS_FILE))


def load_weights(path: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` written by ``save_weights``, on the CPU, read without pickle.

    Parameters
    ----------
    path : str
        The model directory.

    Returns
    -------
    dict of str to torch.Tensor
    """
    return torch.load(os.path.join(path, WEIGHTS_FILE), map_location="cpu", weights_only=True)


def init_params(
    saved: dict[str, Any], precision: str | None = None, device: str | None = None
) -> dict[str, Any]:
    """The ``__init__`` parameters of a loaded model: the saved ones, with overrides.

    Parameters
    ----------
    saved : dict
        The parameters read back from the model directory.
    precision, device : str or None
        Replace the saved ``precision``/``device`` unless ``None``.

    Returns
    -------
    dict
        A new dict; ``saved`` is left as it was.
    """
    params = dict(saved)
    if precision is not None:
        params["precision"] = precision
    if device is not None:
        params["device"] = device
    return params
