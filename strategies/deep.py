"""``deep``: a multinomial denoising autoencoder over the user's history (Mult-DAE, PyTorch).

Why this model (numbers in README "## Deep model", from ``bench/deep_bench.py``): on the
random per-item split that our headline benchmark uses (ml-100k, Recommenders protocol) the
order of a user's events carries little signal (BENCHMARKS.md, sections D and E: a SASRec
reaches only 0.26 nDCG@10 there), while models that read the whole bag of history items and
are trained with a full-softmax (multinomial) loss over the catalogue are among the strongest
(Liang et al. 2018, "Variational Autoencoders for Collaborative Filtering"). The model:

    x   = L2-normalised history row (binary or weighted), dropout on the input while training
    h   = tanh(W_k ... tanh(W_1 x))               (encoder: ``hidden`` sizes)
    s   = W_out h + b                              (one logit per catalogue item)
    loss = -sum_i x_i log softmax(s)_i              (multinomial likelihood)

There is no user embedding table: a user is whatever their current history says, so fresh
events change the scores without retraining, and unknown users are no special case.
``similar_items`` uses the output layer's item vectors (cosine).

Serving (``score``) never builds the dense (b, n_items) input: a history touches ~1-3 % of the
catalogue, so the first encoder layer runs as an embedding bag over the history's item ids
(``W_1`` stored transposed, (n_items, hidden): one row per item, summed with the normalised
weights) straight from the CSR rows; the rest of the network is unchanged. Same math as the
dense ``MultDAE.forward``, several times faster (docs/design-notes.md). Variants
(``precision``): ``fp32``; ``int8`` = the same fp32 embedding bag (a gather of a few rows: int8
would not make it faster) + ``torch.ao.quantization.quantize_dynamic`` on the remaining Linear
layers (CPU only: the quantized kernels are CPU kernels), so int8 serving holds ~0.6x the fp32
bytes (it was ~0.25x when the first layer was quantized too); ``fp16`` = all of it in half
precision on CUDA.
Weights are always saved as the fp32 ``state_dict`` (tensors only, loaded with
``weights_only=True``); the variant is derived at load time in milliseconds.

Over the ~500-line mark through its numpy-style docstrings (about 300 lines are code): the
network, its sparse serving module and the strategy share the input conventions.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from typing import Any, Self

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from features.interactions import InteractionData
from strategies._torch import (
    PRECISIONS,
    Adam,
    ItemCosine,
    check_precision,
    epoch_budget,
    init_params,
    load_weights,
    pin_row,
    quantize_linear,
    resolve_device,
    save_weights,
    scores_to_numpy,
    seeded,
    serving_precision,
    state_dict_bytes,
    training_threads,
)
from strategies.base import TORCH_FLOPS, Strategy, UserBatch, input_bytes

log = logging.getLogger(__name__)

LOSSES = ("auto", "softmax", "sampled")
# ``loss="auto"``: the full softmax up to this many items, sampled beyond (issue 29: at 100k
# items the full one costs ~6 b I h flops a step, an hour of CPU for the default 400 steps).
FULL_SOFTMAX_MAX_ITEMS = 20_000
# Throughput of a sampled-loss step (its estimate's rate; TORCH_FLOPS, 5e9, for the full one):
# at 50k items a step of ~2.5 GFLOP took 43 ms on the 2-core VM's two threads (59 GFLOP/s,
# bench/deep_fit.py); a third of that leaves room for slower machines and the Python per step.
SAMPLED_STEP_FLOPS = 2e10


class MultDAE(nn.Module):
    """Encoder MLP over a normalised history row, decoder to one logit per item.

    Parameters
    ----------
    n_items : int
        Input and output width.
    hidden : tuple of int
        Encoder layer sizes (tanh after each).
    """

    def __init__(self, n_items: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        dims = (n_items, *hidden)
        self.encoder = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.decoder = nn.Linear(dims[-1], n_items)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every item for each input row.

        Parameters
        ----------
        x : torch.Tensor of float, shape (b, n_items)
            Dense history rows, already normalised (``normalise_rows``).

        Returns
        -------
        torch.Tensor, shape (b, n_items)
            Unnormalised logits.
        """
        h = x
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        return self.decoder(h)


# Built once per width: every int8 forward pass appends one (see _SparseServing._layer).
_unit_pin_row = functools.cache(pin_row)


class _SparseServing(nn.Module):
    """What ``score`` runs: ``MultDAE.forward`` with the first layer read from sparse rows.

    ``table`` is ``W_1`` transposed (n_items, hidden_1), contiguous, so the first layer of a
    history row is ``sum_i x_i table[i] + b_1``: an embedding bag over the row's item ids,
    weighted by its normalised values. ``encoder`` (the deeper layers) and ``decoder`` are
    the model's own Linear layers (fp32), half-precision copies (fp16) or dynamically
    quantized copies (int8).
    """

    def __init__(
        self,
        table: torch.Tensor,
        bias: torch.Tensor,
        encoder: nn.ModuleList,
        decoder: nn.Module,
        pin_range: bool = False,
    ) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("bias", bias)
        self.encoder = encoder
        self.decoder = decoder
        self.pin_range = pin_range

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        h = F.embedding_bag(
            indices, self.table, offsets, mode="sum", per_sample_weights=weights
        ).add_(self.bias)
        h = torch.tanh_(h)
        for layer in self.encoder:
            h = torch.tanh_(self._layer(layer, h))
        return self._layer(self.decoder, h)

    def _layer(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if not self.pin_range:
            return layer(h)
        # Dynamically quantized (int8) layers quantize their input with the minimum and maximum
        # of the whole batch, so one user's scores would depend on who else is in the batch
        # (and a request scored alone would differ from the same user in a batch or in offline
        # evaluation). Every layer's input here is a tanh output, inside [-1, 1]: one extra row
        # holding 1 and -1 pins the range to exactly that for any batch, and each row comes out
        # the same alone or with others.
        return layer(torch.cat([h, _unit_pin_row(h.shape[1])]))[:-1]


def normalise_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    """The model's input rows: each row L2-normalised, as float32.

    Parameters
    ----------
    m : scipy.sparse.csr_matrix
        Non-negative history rows (``DeepStrategy``'s clamped, maybe binarised, inputs).

    Returns
    -------
    scipy.sparse.csr_matrix
        A float32 copy; zero rows stay zero.
    """
    m = m.astype(np.float32, copy=True)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel()).astype(np.float32)
    norms[norms == 0] = 1.0
    m.data /= np.repeat(norms, np.diff(m.indptr))
    return m


def _first_layer_table(model: MultDAE) -> torch.Tensor:
    """``W_1`` transposed and contiguous (n_items, hidden_1): the embedding-bag table.

    The first Linear layer is re-pointed at a transposed view of the table, so the model and
    the serving path share one copy of the largest matrix (``F.linear`` takes either layout;
    the state_dict holds the same values, so saving and loading are unaffected).
    """
    first = model.encoder[0]
    table = first.weight.detach().t()
    if not table.is_contiguous():
        table = table.contiguous()
        first.weight.data = table.t()
    return table


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without its warning on a read-only array (copied then)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class DeepStrategy(Strategy):
    """Mult-DAE collaborative model for warm users; CUDA when available, else CPU.

    Parameters
    ----------
    hidden : tuple of int
        Encoder layer sizes.
    epochs : int
        Epochs at most, cut by ``max_steps``.
    max_steps : int or None
        A budget of gradient steps (whole epochs, at least one; ``None``: no budget).
    max_epoch_steps : int or None
        When one epoch alone is over ``max_steps`` (more than ``max_steps x batch_size``
        users), the fit runs that one epoch up to this many steps: a random part of the users
        (``None``: the whole epoch). 2,000 steps = 256k users; at 1M users a whole epoch took
        7,800 steps, and a fit 3-4 times the 400 steps estimated (issue 29).
    batch_size, lr, weight_decay
        Users per step and the Adam settings.
    dropout : float
        Input dropout while training.
    binary : bool
        History weights become 0/1 before normalising (the input and the target).
    seed : int
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    precision : str
        Served in ``fp32``, ``int8`` or ``fp16``.
    loss : {"auto", "softmax", "sampled"}
        The multinomial likelihood over the whole catalogue (``softmax``), or over the batch's
        history items and ``n_negatives`` shared uniform negatives (``sampled``, with the
        log-inclusion correction, so it estimates the full softmax: the decoder's cost per
        step no longer grows with the catalogue); ``auto``: the full softmax up to
        ``FULL_SOFTMAX_MAX_ITEMS`` items.
    n_negatives : int
        Uniform negatives a sampled step draws (shared by the batch).
    """

    name = "deep"
    # An empty input row decodes to the model's learned prior over items.
    scores_empty_history = True
    batched = True
    devices = ("cpu", "cuda")
    precisions = PRECISIONS
    # Normalised item vectors for similar_items, built on its first call.
    _cosine: ItemCosine | None = None

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int] = (600,),
        epochs: int = 40,
        max_steps: int | None = 400,
        max_epoch_steps: int | None = 2000,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        dropout: float = 0.5,
        binary: bool = True,
        seed: int = 42,
        device: str = "auto",
        precision: str = "fp32",
        loss: str = "auto",
        n_negatives: int = 4096,
    ) -> None:
        check_precision(precision)
        if loss not in LOSSES:
            raise ValueError(f"deep: loss must be one of {', '.join(LOSSES)}, not {loss!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs = epochs
        self.max_steps = max_steps
        self.max_epoch_steps = max_epoch_steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.binary = binary
        self.seed = seed
        self.device = device
        self.precision = precision
        self.loss = loss
        self.n_negatives = n_negatives

    def _step_limit(self, per_epoch: int) -> int:
        """Gradient steps of a fit with ``per_epoch`` steps an epoch (see ``max_epoch_steps``)."""
        limit = epoch_budget(self.epochs, self.max_steps, per_epoch) * per_epoch
        if self.max_steps and self.max_epoch_steps and limit > self.max_steps:
            limit = max(int(self.max_steps), min(limit, int(self.max_epoch_steps)))
        return limit

    def _sampled(self, n_items: int) -> bool:
        return self.loss == "sampled" or (self.loss == "auto" and n_items > FULL_SOFTMAX_MAX_ITEMS)

    # -- training -------------------------------------------------------------------------------
    def _inputs(self, matrix: sp.csr_matrix) -> sp.csr_matrix:
        m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        m.data[m.data < 0] = 0
        m.eliminate_zeros()
        if self.binary:
            m.data[:] = 1.0
        return m

    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``; trains on every usable core (``training_threads``)."""
        started = time.perf_counter()
        self.device_ = resolve_device(self.device)
        self.n_items_ = data.n_items
        with training_threads():  # every usable core, the caller's count restored after
            self.model_ = self._train(data)
        self._prepare_serving()
        self.fit_seconds_ = time.perf_counter() - started
        log.info(
            "deep: fitted %d users x %d items in %.1fs (%d steps) on %s",
            self.n_train_users_,
            self.n_items_,
            self.fit_seconds_,
            self.steps_,
            self.device_,
        )
        return self

    def _train(self, data: InteractionData) -> MultDAE:
        gen, rng = seeded(self.seed)

        x = self._inputs(data.matrix())
        rows = np.flatnonzero(np.diff(x.indptr) > 0)
        xn = normalise_rows(x)
        model = MultDAE(self.n_items_, self.hidden).to(self.device_)
        first = model.encoder[0]
        # The first layer as an embedding bag over the history's item ids: a history touches
        # ~1-3 % of the catalogue, and an (n_items, hidden) table summed per row (forward) and
        # scattered into (backward) is much faster on the CPU than torch.sparse.mm with a
        # COO batch (docs/design-notes.md). Trained in this layout, copied back into the
        # Linear layer at the end so the saved state_dict and the serving module are unchanged.
        table = nn.Parameter(first.weight.detach().t().contiguous())
        params = [table, first.bias]
        params += [p for layer in model.encoder[1:] for p in layer.parameters()]
        params += list(model.decoder.parameters())
        opt = Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        model.train()
        self.steps_ = 0
        per_epoch = math.ceil(len(rows) / self.batch_size)
        epochs = epoch_budget(self.epochs, self.max_steps, per_epoch)
        limit = self._step_limit(per_epoch)
        self.loss_ = "sampled" if self._sampled(self.n_items_) else "softmax"
        sampled = self.loss_ == "sampled"
        for epoch in range(epochs):
            rng.shuffle(rows)
            total = 0.0
            for start in range(0, len(rows), self.batch_size):
                if self.steps_ >= limit:
                    break
                idx = rows[start : start + self.batch_size]
                ind, off, vals, target, row_of = self._batch_tensors(xn[idx], x[idx], gen)
                # With the sampled loss (large catalogues) the two items-wide tensors get
                # row-sparse gradients and a lazy Adam step over the rows a batch touches:
                # dense ones made every step write 2 I h floats of gradient and moments (at
                # 100k items a step took ~0.1 s, one epoch over 1M users 13 min).
                h = torch.tanh(
                    F.embedding_bag(
                        ind, table, off, mode="sum", per_sample_weights=vals, sparse=sampled
                    )
                    + first.bias
                )
                for layer in model.encoder[1:]:
                    h = torch.tanh(layer(h))
                if sampled:
                    loss = self._sampled_loss(model.decoder, h, ind, target, row_of, gen)
                else:
                    logits = model.decoder(h)
                    # Multinomial log-likelihood of the (unnormalised) history under
                    # softmax(s), read at the history's items only (the target is as sparse
                    # as the input).
                    logp = F.log_softmax(logits, dim=1)
                    loss = -(logp[row_of, ind] * target).sum() / len(idx)
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.steps_ += 1
                total += float(loss.detach()) * len(idx)
            log.debug("deep epoch %d loss %.4f", epoch, total / max(len(rows), 1))
        with torch.no_grad():
            first.weight.copy_(table.t())
        model.eval()
        self.n_train_users_ = len(rows)
        return model

    def _sampled_loss(
        self,
        decoder: nn.Linear,
        h: torch.Tensor,
        ind: torch.Tensor,
        target: torch.Tensor,
        row_of: torch.Tensor,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """The multinomial loss over a sampled part of the catalogue: the batch's history
        items (every row's positives, as the full loss reads them) and ``n_negatives`` uniform
        draws. A drawn item outside the histories stands for the catalogue's unsampled rest:
        its logit gets ``- log q``, q = 1 - (1 - 1/I)^n_negatives its chance of being drawn
        (about ``n_negatives / I``), so the normaliser estimates the full softmax's; b x C
        logits instead of b x I."""
        n = self.n_items_
        neg = torch.randint(0, n, (self.n_negatives,), generator=gen).to(h.device)
        cols, inv = torch.unique(torch.cat([ind, neg]), return_inverse=True)
        positive = torch.zeros(len(cols), dtype=torch.bool, device=h.device)
        positive[inv[: len(ind)]] = True
        weight = F.embedding(cols, decoder.weight, sparse=True)  # the rows, a sparse gradient
        logits = F.linear(h, weight, decoder.bias[cols])
        drawn = -math.expm1(self.n_negatives * math.log1p(-1.0 / n)) if n > 1 else 1.0
        correction = torch.where(positive, 0.0, -math.log(drawn))
        logp = F.log_softmax(logits + correction, dim=1)
        return -(logp[row_of, inv[: len(ind)]] * target).sum() / h.shape[0]

    def _batch_tensors(
        self, xn: sp.csr_matrix, target: sp.csr_matrix, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat item ids, row offsets, dropped-out input weights, target weights, row of each.

        ``xn`` and ``target`` are row slices of the same matrix, so they share a sparsity
        pattern; dropout zeroes input weights only (the target keeps the whole history).
        """
        ind = torch.from_numpy(xn.indices.astype(np.int64))
        off = torch.from_numpy(xn.indptr[:-1].astype(np.int64))
        vals = torch.from_numpy(xn.data)
        if self.dropout > 0:
            keep = torch.rand(vals.shape, generator=gen) >= self.dropout
            vals = vals * keep / (1.0 - self.dropout)
        row_of = torch.from_numpy(np.repeat(np.arange(xn.shape[0]), np.diff(xn.indptr)))
        tgt = torch.from_numpy(target.data)
        dev = self.device_
        return ind.to(dev), off.to(dev), vals.to(dev), tgt.to(dev), row_of.to(dev)

    # -- serving --------------------------------------------------------------------------------
    def _prepare_serving(self) -> None:
        """Build the module that ``score`` runs (``_SparseServing``), in the requested precision."""
        prec = serving_precision(self.precision, self.device_, self.name, log)
        model = self.model_
        table = _first_layer_table(model)
        bias = model.encoder[0].bias.detach()
        rest = nn.ModuleList(model.encoder[1:])
        decoder = model.decoder
        if prec == "int8":
            # Dynamic int8 kernels exist for the CPU only, so the int8 variant always runs there.
            # The first layer stays the fp32 table (shared with the model when it is on the
            # CPU): an embedding bag gathers a few dozen rows, int8 would not make it faster.
            cpu = torch.device("cpu")
            table, bias = table.to(cpu), bias.to(cpu)
            tail = nn.ModuleDict({"encoder": rest, "decoder": decoder})
            if self.device_.type != "cpu":
                tail = copy.deepcopy(tail).to(cpu)
            tail = quantize_linear(tail.eval())  # a copy: the model's fp32 layers stay
            rest, decoder = tail["encoder"], tail["decoder"]
            self.serving_device_ = cpu
        elif prec == "fp16":
            table, bias = table.half(), bias.half()
            rest, decoder = copy.deepcopy(rest).half(), copy.deepcopy(decoder).half()
            self.serving_device_ = self.device_
        else:
            self.serving_device_ = self.device_
        self.serving_ = _SparseServing(table, bias, rest, decoder, pin_range=prec == "int8").eval()
        self.serving_precision_ = prec
        self.serving_dtype_ = torch.float16 if prec == "fp16" else torch.float32

    def quantized(self, precision: str = "int8") -> DeepStrategy:
        """A copy of this fitted model serving in another precision.

        Parameters
        ----------
        precision : str
            ``fp32``, ``int8`` or ``fp16`` (fp32 without CUDA).

        Returns
        -------
        DeepStrategy
            Shares this model's fp32 weights; only the serving module is new.
        """
        params = {**self.get_params(), "precision": check_precision(precision)}
        other = type(self)(**params)
        other.device_ = self.device_
        other.n_items_ = self.n_items_
        other.model_ = self.model_
        other._prepare_serving()
        return other

    def serving_nbytes(self) -> int:
        """Size of the serving module's state_dict: everything ``score`` reads.

        fp32: the first-layer table + bias, the deeper layers and the decoder (the model's
        own tensors, not a second copy); int8: the fp32 table + bias and the int8 layers;
        fp16: all of it in half precision.

        Returns
        -------
        int
            Bytes.
        """
        return state_dict_bytes(self.serving_)

    def _serving_rows(self, matrix: sp.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indices, indptr, values)`` of ``normalise_rows(self._inputs(matrix))``, cheaply.

        ``_inputs`` copies the whole matrix to clamp it; here the caller's arrays are read
        as they are and only the values are new: entries <= 0 are dropped (as ``_inputs``
        clamps and eliminates them), ``binary`` makes every value 1, and each row is divided
        by its L2 norm (empty rows stay empty). With ``binary`` (the default) the values are
        bit-for-bit ``normalise_rows``'s, ``1 / sqrt(count)`` in float32; weighted rows sum
        the squares in float64 (``normalise_rows`` in float32: the norms may differ in the
        last bit). A CSR with duplicate entries takes the copying path, which sums them.
        """
        if not (sp.issparse(matrix) and matrix.format == "csr"):
            matrix = sp.csr_matrix(matrix)
        if not matrix.has_canonical_format:
            m = normalise_rows(self._inputs(matrix))
            return m.indices, m.indptr, m.data
        indices, indptr, data = matrix.indices, matrix.indptr, matrix.data
        if data.dtype != np.float32:
            data = data.astype(np.float32)
        drop = data <= 0  # negative weights are no history (NaN is kept, as _inputs keeps it)
        if drop.any():
            keep = ~drop
            indptr = np.concatenate(([0], np.cumsum(keep)))[indptr]
            indices, data = indices[keep], data[keep]
        counts = indptr[1:] - indptr[:-1]
        if self.binary:
            # Empty rows have no values to scale: their norm of 1 (as in normalise_rows) is
            # never repeated.
            inv = np.float32(1.0) / np.sqrt(np.maximum(counts, 1), dtype=np.float32)
            return indices, indptr, np.repeat(inv, counts)
        row_of = np.repeat(np.arange(len(counts)), counts)
        sq = np.bincount(row_of, weights=data * data, minlength=len(counts))
        norms = np.sqrt(sq.astype(np.float32))
        norms[norms == 0] = 1.0
        return indices, indptr, data / np.repeat(norms, counts)

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: the two items-wide layers (2 I h parameters, h = ``hidden[0]``) with their
        gradients and Adam's two moments (16 bytes a parameter), a batch's dense logits (three
        b x C float32 arrays, C = I with the full softmax, else b E / U + ``n_negatives``) and
        the serving copy of the first layer; time: ``steps`` of ~6 b C h flops (forward,
        backward; decoder and softmax dominate) and Adam's ~10 flops a parameter it updates
        (every one; with the sampled loss only the C + b E / U rows a step touches), steps as
        ``_step_limit`` (whole epochs within ``max_steps``, else one epoch up to
        ``max_epoch_steps``), at ``TORCH_FLOPS`` (``SAMPLED_STEP_FLOPS`` with the sampled
        loss). See ``Strategy.estimate_cost``.
        """
        p = cls._params_with(params)
        hidden = [int(h) for h in p["hidden"]] or [1]
        b = int(p["batch_size"])
        inner = sum(a * c for a, c in zip(hidden[:-1], hidden[1:], strict=True))
        n_params = 2.0 * n_items * hidden[0] + inner
        # logits' columns: the catalogue, or the batch's history items and the negatives
        cols = float(n_items)
        model = cls(**{**p, "hidden": hidden})
        updated = n_params  # parameters Adam updates a step
        if model._sampled(n_items):
            cols = min(cols, b * n_events / max(n_users, 1) + int(p["n_negatives"]))
            # row-sparse: the decoder's sampled rows and the input table's history rows
            updated = 2.0 * cols * hidden[0] + inner
        memory = input_bytes(n_users, n_items, n_events) + 16.0 * n_params
        memory += 12.0 * b * cols + 4.0 * n_items * hidden[0]
        steps = model._step_limit(math.ceil(max(n_users, 1) / b))
        rate = SAMPLED_STEP_FLOPS if model._sampled(n_items) else TORCH_FLOPS
        # forward and backward over the logits, and Adam's pass over what it updates
        return memory, steps * (6.0 * b * cols * hidden[0] + 10.0 * updated) / rate

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``; runs the serving module on ``serving_device_``.

        Raises
        ------
        ValueError
            If the batch's matrix width is not the model's number of items.
        """
        matrix = users.matrix
        if matrix.shape[1] != self.n_items_:
            raise ValueError(f"deep: batch has {matrix.shape[1]} items, model has {self.n_items_}")
        indices, indptr, values = self._serving_rows(matrix)
        if indices.dtype != indptr.dtype or indices.dtype not in (np.int32, np.int64):
            indices, indptr = indices.astype(np.int64), indptr.astype(np.int64)
        dev, dtype = self.serving_device_, self.serving_dtype_
        with torch.inference_mode():
            ind = _as_tensor(indices)
            off = _as_tensor(indptr[:-1])
            w = torch.from_numpy(values)
            if dev.type != "cpu" or dtype != torch.float32:
                ind, off, w = ind.to(dev), off.to(dev), w.to(dev, dtype=dtype)
            return scores_to_numpy(self.serving_(ind, off, w))

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of the output layer's item vectors.

        See ``Strategy.similar_items``.
        """
        if self._cosine is None:
            self._cosine = ItemCosine()
        return self._cosine.similar_items(self.model_.decoder.weight, items, n)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """See ``Strategy.save``; the fp32 weights as ``WEIGHTS_FILE`` (a ``state_dict``)."""
        save_weights(self.model_, path)
        self._save_params(path, {"n_items": self.n_items_})

    @classmethod
    def load(cls, path: str, precision: str | None = None, device: str | None = None) -> Self:
        """Read a model written by ``save``.

        Parameters
        ----------
        path : str
            The model directory.
        precision, device : str or None
            Override the saved parameters (``None``: as saved).

        Returns
        -------
        DeepStrategy
        """
        meta = cls._load_params(path)
        self = cls(**init_params(meta["params"], precision, device))
        self.device_ = resolve_device(self.device)
        self.n_items_ = int(meta["n_items"])
        model = MultDAE(self.n_items_, self.hidden)
        model.load_state_dict(load_weights(path))
        self.model_ = model.to(self.device_).eval()
        self._prepare_serving()
        return self
