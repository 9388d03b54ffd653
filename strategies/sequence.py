"""``sequence``: a causal self-attention model over the user's most recent events (SASRec).

Why: the ``deep`` model reads a history as a bag of items; for "what next" (the next purchase,
the next click of a session) the order carries the signal, and a transformer over the sequence
is what the field uses (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation").
Measured through ``recsys evaluate`` in docs/sequence.md.

The model, for a history ``i_1 .. i_t`` (oldest first, the last ``max_len`` events)::

    x_p = E[i_p] * sqrt(d) + P[L - t + p] (+ T[type_p])   item, position-from-the-end, event type
    h   = n_blocks x pre-LayerNorm causal self-attention + feed-forward blocks over x
    s   = LayerNorm(h_t) . E^T                              one score per catalogue item

``E`` (item embeddings) is shared between input and output, as in SASRec. Sequences are padded
on the left and positions count from the newest event, so the newest event always sits at the
last position whatever the length, and training (fixed length ``max_len``) and serving (the
batch's longest history, which is cheaper for short ones) read the same position embeddings.
Padding keys are masked, so a user's scores do not depend on who else is in the batch.

Training: every position predicts the next item (teacher forcing), one sample per chunk of
``max_len + 1`` events from the end of each user's sequence; the loss is the full softmax over
the catalogue (``loss="softmax"``) or a sampled softmax over ``n_negatives`` shared uniform
negatives (``"sampled"``; ``"auto"`` picks the full softmax up to ``FULL_SOFTMAX_MAX_ITEMS``
items). The budget is ``epochs``, cut by ``max_steps`` gradient steps and ``max_seconds``.

How long to train is chosen on the data it is given, not fixed in advance: with
``early_stopping`` (a share of the users, 10 % by default, between ``HOLDOUT_USERS`` bounds),
those users' newest events are held out of training, the model is scored on them after every
epoch (full-rank nDCG of the held-out item, seen items excluded, as served), training stops
once ``patience`` epochs pass without a new best, and the best epoch's weights are kept. With
too few users to hold out (under ``2 * HOLDOUT_USERS[0]``), ``epochs`` alone decides.

There is no user embedding table: a user is their current sequence, so a new event changes the
next answer at once, and a guest session is scored exactly like a known user.

Serving precisions (``precision``): ``fp32``; ``int8`` = ``quantize_dynamic`` on every Linear
layer (CPU kernels), each layer's input clamped to, and its range pinned at, the largest
absolute value seen on training sequences (calibrated at quantisation time), so a user's scores
do not depend on the batch (dynamic quantisation otherwise takes the range of the whole batch,
see ``strategies._torch.pin_row``); ``fp16`` on CUDA. Weights are saved as the fp32
``state_dict`` (tensors only, loaded with ``weights_only=True``); the variant is derived at load.

What the torch strategies share (device, threads, seeding, Adam, precision, persistence) is in
``strategies._torch``. This module stays one file over the ~500-line mark: the network, its
training (sample chunks, held-out early stopping, sampled softmax), int8 calibration and
request-time tokenisation read the same ``max_len``/padding conventions, and splitting them
would spread one model's invariants over several files.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Self

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from features.interactions import DISLIKE, EVENT_TYPES, InteractionData
from strategies._torch import (
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
    usable_cores,
)
from strategies.base import TORCH_FLOPS, Strategy, UserBatch, input_bytes

log = logging.getLogger(__name__)

LOSSES = ("auto", "softmax", "sampled")
# Up to this many items the full softmax is cheap enough (ml-100k 1,682, Online Retail 3,665).
FULL_SOFTMAX_MAX_ITEMS = 50_000
# Training tokens per epoch under which one torch thread trains faster than several.
SMALL_JOB_TOKENS = 200_000
# Training sequences used to calibrate the int8 input ranges.
CALIBRATION_SEQUENCES = 512
# Bounds on the users whose newest event is held out to choose the number of epochs.
HOLDOUT_USERS = (100, 2000)
# The Linear layers of a block (what int8 quantises).
LINEAR_LAYERS = ("qkv", "out", "ffn1", "ffn2")


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a feed-forward layer.

    Written out (rather than ``nn.TransformerEncoderLayer``) so every matrix product is a plain
    ``nn.Linear``, which dynamic int8 quantisation replaces, and attention runs through
    ``F.scaled_dot_product_attention`` on the CPU and CUDA alike.
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn1 = nn.Linear(dim, ffn_dim)
        self.ffn2 = nn.Linear(ffn_dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (b, L, d); ``mask`` (b, 1, L, L) bool, True where a query may attend."""
        b, length, d = x.shape
        heads = self.n_heads
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        q, k, v = (t.reshape(b, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        a = a.transpose(1, 2).reshape(b, length, d)
        x = x + F.dropout(self.out(a), drop, self.training)
        f = self.ffn2(F.dropout(F.gelu(self.ffn1(self.norm2(x))), drop, self.training))
        return x + F.dropout(f, drop, self.training)


class SASRec(nn.Module):
    """Item (+ event type) and position embeddings, causal blocks, a final LayerNorm.

    Item index ``i`` of the catalogue is token ``i + 1``; token 0 is padding (also for types).

    Parameters
    ----------
    n_items : int
        Catalogue size (the item table has ``n_items + 1`` rows).
    dim : int
        Embedding and hidden size d.
    n_blocks : int
        Transformer blocks.
    n_heads : int
        Attention heads per block.
    ffn_dim : int
        Feed-forward width.
    max_len : int
        Positions (the longest sequence read).
    n_types : int
        Event types embedded; 0: no type embedding.
    dropout : float
        Dropout rate while training.
    """

    def __init__(
        self,
        n_items: int,
        dim: int,
        n_blocks: int,
        n_heads: int,
        ffn_dim: int,
        max_len: int,
        n_types: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.item_emb = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.type_emb = nn.Embedding(n_types + 1, dim, padding_idx=0) if n_types else None
        self.blocks = nn.ModuleList(_Block(dim, n_heads, ffn_dim, dropout) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(dim)
        self.dropout = dropout
        nn.init.normal_(self.item_emb.weight, std=dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states of left-padded token sequences.

        Parameters
        ----------
        seq : torch.Tensor of int64, shape (b, L)
            Item tokens (item index + 1), left-padded with 0; L <= ``max_len``.
        types : torch.Tensor of int64, shape (b, L), optional
            Event type tokens (type code + 1, 0 = padding); ``None`` or no type embedding: ignored.

        Returns
        -------
        torch.Tensor of float, shape (b, L, d)
            Padding positions are zero before the final LayerNorm; the last position is the newest
            event's state.
        """
        length = seq.shape[1]
        valid = seq > 0
        x = self.item_emb(seq) * math.sqrt(self.dim)
        x = x + self.pos_emb.weight[self.pos_emb.num_embeddings - length :]
        if self.type_emb is not None and types is not None:
            x = x + self.type_emb(types)
        x = F.dropout(x, self.dropout, self.training) * valid.unsqueeze(-1)
        # Causal and padding-aware; every query may also see itself, so an all-padding row
        # (an empty history) has a key to attend to and stays finite.
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = ((causal & valid[:, None, :]) | eye).unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask) * valid.unsqueeze(-1)
        return self.norm(x)

    def item_table(self) -> torch.Tensor:
        """The output embeddings (padding row dropped).

        Returns
        -------
        torch.Tensor, shape (n_items, d)
            A view of the item embedding weight.
        """
        return self.item_emb.weight[1:]


class _PinnedRange(nn.Module):
    """A dynamically quantised Linear whose input range is fixed at ``[-bound, bound]``.

    Dynamic int8 quantisation scales each call's input by the min and max of the whole input
    tensor, i.e. of every user in the batch; clamping to a calibrated bound and appending one
    row holding ``bound`` and ``-bound`` makes the scale the same for any batch.
    """

    def __init__(self, layer: nn.Module, bound: float, width: int) -> None:
        super().__init__()
        self.layer = layer
        self.bound = float(bound)
        self.register_buffer("pin", pin_row(width, self.bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).clamp(-self.bound, self.bound)
        out = self.layer(torch.cat([flat, self.pin]))[:-1]
        return out.reshape(*shape[:-1], out.shape[-1])


class SequenceStrategy(Strategy):
    """SASRec-style next-item model over the user's ordered history; CUDA when available.

    Parameters
    ----------
    max_len : int
        Events read per user (the newest).
    dim, n_blocks, n_heads, ffn_dim, dropout
        Embedding size, transformer blocks, attention heads, feed-forward width (``None``:
        ``dim``), dropout.
    use_types : bool
        Add an event-type embedding when the training data has more than one event type.
    loss : str
        ``auto``, ``softmax`` or ``sampled`` (over ``n_negatives`` shared negatives).
    n_negatives : int
    epochs, max_steps, max_seconds
        Epochs at most, cut by a budget of gradient steps and of seconds.
    early_stopping : float or None
        Share of users held out to pick the epoch (``None``: off); see ``patience``.
    patience : int
        Epochs without a new best held-out score before training stops.
    batch_size, lr, weight_decay
        Sequences per step and the Adam settings.
    seed : int
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    precision : str
        Served in ``fp32``, ``int8`` or ``fp16``.
    n_threads : int or None
        Torch threads for training (``None``: every usable core, one for a small job).
    """

    name = "sequence"
    # ~6 min of CPU fit on Online Retail on the 2-core VM, and in no route by default.
    opt_in = True
    batched = True
    devices = ("cpu", "cuda")
    # Served as trained (its ``precision`` parameter): int8 kept its accuracy but doubled the
    # time of a one-user call on the CPU (docs/sequence.md), so no variant is derived at load.
    precisions: tuple[str, ...] = ()
    # Normalised item embeddings for similar_items, built on its first call.
    _cosine: ItemCosine | None = None

    def __init__(
        self,
        max_len: int = 50,
        dim: int = 64,
        n_blocks: int = 2,
        n_heads: int = 1,
        ffn_dim: int | None = None,
        dropout: float = 0.2,
        use_types: bool = True,
        loss: str = "auto",
        n_negatives: int = 256,
        epochs: int = 200,
        max_steps: int | None = None,
        max_seconds: float | None = 600.0,
        early_stopping: float | None = 0.1,
        patience: int = 10,
        batch_size: int = 128,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        seed: int = 42,
        device: str = "auto",
        precision: str = "fp32",
        n_threads: int | None = None,
    ) -> None:
        check_precision(precision)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if dim % n_heads:
            raise ValueError(f"dim ({dim}) must be a multiple of n_heads ({n_heads})")
        self.max_len = max_len
        self.dim = dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.ffn_dim = ffn_dim
        self.dropout = dropout
        self.use_types = use_types
        self.loss = loss
        self.n_negatives = n_negatives
        self.epochs = epochs
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.early_stopping = early_stopping
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.device = device
        self.precision = precision
        self.n_threads = n_threads

    def _training_threads(self, n_tokens: int) -> int:
        """``n_threads``, else every usable core, but one for a small job: on our busy 2-core
        machine a 40-step toy fit took 22 s with 2 torch threads and 1.9 s with one (the
        threads spin waiting for each other when another process holds a core)."""
        if self.n_threads:
            return int(self.n_threads)
        return 1 if n_tokens < SMALL_JOB_TOKENS else usable_cores()

    def _new_model(self) -> SASRec:
        return SASRec(
            self.n_items_,
            self.dim,
            self.n_blocks,
            self.n_heads,
            self.ffn_dim or self.dim,
            self.max_len,
            self.n_types_,
            self.dropout,
        )

    # -- training -------------------------------------------------------------------------------
    def fit(self, data: InteractionData) -> Self:
        """See ``Strategy.fit``; trains on every usable core, with held-out early stopping."""
        started = time.perf_counter()
        self.device_ = resolve_device(self.device)
        self.n_items_ = data.n_items
        pos = data.event_type != DISLIKE
        distinct = np.unique(data.event_type[pos])
        self.n_types_ = len(EVENT_TYPES) if self.use_types and len(distinct) > 1 else 0
        seqs, types = ordered_sequences(data)
        with training_threads(self._training_threads(int(pos.sum()))):
            self.model_ = self._train(seqs, types, started)
        self.int8_bounds_ = self._calibrate(self.model_, seqs, types)
        self._prepare_serving()
        self.fit_seconds_ = time.perf_counter() - started
        log.info(
            "sequence: fitted %d sequences x %d items in %.1fs (%d steps, %s loss) on %s",
            self.n_train_sequences_,
            self.n_items_,
            self.fit_seconds_,
            self.steps_,
            self.loss_,
            self.device_,
        )
        return self

    def _samples(
        self, seqs: list[np.ndarray], types: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, max_len + 1) left-padded token chunks (items, types), from each sequence's end."""
        width = self.max_len + 1
        rows_i, rows_t = [], []
        for s, t in zip(seqs, types, strict=True):
            # A chunk shares its first event with the next one's last: every transition counts.
            end = len(s)
            while end >= 2:
                start = max(0, end - width)
                rows_i.append(s[start:end] + 1)
                rows_t.append(t[start:end] + 1)
                end = start + 1 if start > 0 else 0
        out_i = np.zeros((len(rows_i), width), np.int64)
        out_t = np.zeros((len(rows_t), width), np.int64)
        for r, (a, b) in enumerate(zip(rows_i, rows_t, strict=True)):
            out_i[r, width - len(a) :] = a
            out_t[r, width - len(b) :] = b
        return out_i, out_t

    def _holdout(self, seqs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """Users whose newest event is held out to pick the epoch (empty: no early stopping)."""
        if not self.early_stopping:
            return np.zeros(0, np.int64)
        lo, hi = HOLDOUT_USERS
        eligible = np.flatnonzero(np.array([len(s) >= 3 for s in seqs], bool))
        if len(eligible) < 2 * lo:
            return np.zeros(0, np.int64)
        n = int(np.clip(round(len(eligible) * self.early_stopping), lo, hi))
        return np.sort(rng.choice(eligible, size=n, replace=False))

    def _holdout_scorer(self, seqs, types, users: np.ndarray):
        """``score(model) -> float``: mean full-rank nDCG of each held-out user's newest item
        given the rest of their sequence, their other items excluded (as served)."""
        dev = self.device_
        inputs = [seqs[u][:-1] for u in users]
        in_types = [types[u][:-1] for u in users]
        targets = torch.tensor([int(seqs[u][-1]) for u in users], dtype=torch.long)

        def score(model: SASRec) -> float:
            gains = []
            with torch.inference_mode():
                for start in range(0, len(users), 256):
                    sl = slice(start, start + 256)
                    tok, typ = self._tokens(inputs[sl], in_types[sl])
                    tok = tok.to(dev)
                    typ = typ.to(dev) if typ is not None else None
                    s = (model.encode(tok, typ)[:, -1] @ model.item_table().t()).float()
                    tgt = targets[sl].to(dev)
                    own = s.gather(1, tgt[:, None])
                    for r, seq in enumerate(inputs[sl]):  # seen items are never recommended
                        s[r, torch.as_tensor(seq, device=dev)] = float("-inf")
                    rank = (s > own).sum(1).float()
                    gains.append((1.0 / torch.log2(rank + 2.0)).cpu())
            return float(torch.cat(gains).mean())

        return score

    def _train(self, seqs: list[np.ndarray], types: list[np.ndarray], started: float) -> SASRec:
        gen, rng = seeded(self.seed)
        held = self._holdout(seqs, rng)
        check = None
        if len(held):
            check = self._holdout_scorer(seqs, types, held)
            seqs, types = list(seqs), list(types)
            for u in held:
                seqs[u], types[u] = seqs[u][:-1], types[u][:-1]
        self.holdout_users_ = len(held)
        self.holdout_curve_: list[float] = []
        best_score, best_state, self.best_epoch_ = -1.0, None, 0
        tok, typ = self._samples(seqs, types)
        self.n_train_sequences_ = len(tok)
        self.loss_ = self.loss
        if self.loss_ == "auto":
            self.loss_ = "softmax" if self.n_items_ <= FULL_SOFTMAX_MAX_ITEMS else "sampled"
        dev = self.device_
        model = self._new_model().to(dev)
        opt = Adam(list(model.parameters()), lr=self.lr, weight_decay=self.weight_decay)
        model.train()
        self.steps_ = 0
        per_epoch = math.ceil(len(tok) / self.batch_size) if len(tok) else 0
        epochs = epoch_budget(self.epochs, self.max_steps, per_epoch)
        with_types = self.n_types_ > 0
        order = np.arange(len(tok))
        for epoch in range(epochs if per_epoch else 0):
            rng.shuffle(order)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                chunk = torch.from_numpy(tok[idx]).to(dev)
                inp, tgt = chunk[:, :-1], chunk[:, 1:]
                tin = torch.from_numpy(typ[idx][:, :-1]).to(dev) if with_types else None
                h = model.encode(inp, tin)
                keep = (inp > 0) & (tgt > 0)
                hk, target = h[keep], tgt[keep] - 1
                loss = self._loss(model, hk, target, gen)
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.steps_ += 1
                total += float(loss.detach())
            log.debug("sequence epoch %d loss %.4f", epoch, total / max(per_epoch, 1))
            hook = getattr(self, "on_epoch", None)
            if hook is not None:
                # Validation during training (bench/sequence_tune.py): score with the model as
                # it is now; the hook's time does not count against the budget.
                t_hook = time.perf_counter()
                model.eval()
                self.model_, self.serving_, self.serving_device_ = model, model, dev
                hook(epoch + 1, self)
                model.train()
                started += time.perf_counter() - t_hook
            if check is not None:
                model.eval()
                value = check(model)
                model.train()
                self.holdout_curve_.append(round(value, 5))
                if value > best_score:
                    best_score, self.best_epoch_ = value, epoch + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif epoch + 1 - self.best_epoch_ >= self.patience:
                    log.info(
                        "sequence: held-out nDCG peaked at epoch %d (%.4f); stopped at %d",
                        self.best_epoch_,
                        best_score,
                        epoch + 1,
                    )
                    break
            if self.max_seconds and time.perf_counter() - started > self.max_seconds:
                log.info("sequence: time budget reached after %d epochs", epoch + 1)
                break
        self.epochs_ = epoch + 1 if per_epoch else 0
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            self.best_epoch_ = self.epochs_
        model.eval()
        return model

    def _loss(
        self, model: SASRec, h: torch.Tensor, target: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        table = model.item_table()
        if self.loss_ == "softmax":
            return F.cross_entropy(h @ table.t(), target)
        # Sampled softmax: the positive against shared uniform negatives; a negative that is
        # the positive itself is masked out.
        neg = torch.randint(0, self.n_items_, (self.n_negatives,), generator=gen).to(h.device)
        pos_logit = (h * table[target]).sum(-1, keepdim=True)
        neg_logit = h @ table[neg].t()
        neg_logit = neg_logit.masked_fill(target[:, None] == neg[None, :], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long, device=h.device))

    # -- serving --------------------------------------------------------------------------------
    def _prepare_serving(self) -> None:
        """The module ``score`` runs, in the requested precision, and where it runs."""
        prec = serving_precision(self.precision, self.device_, self.name, log)
        model = self.model_
        if prec == "int8":
            cpu = torch.device("cpu")
            serving = copy.deepcopy(model).to(cpu).eval()
            bounds = self.int8_bounds_
            for i, block in enumerate(serving.blocks):
                for name in LINEAR_LAYERS:
                    layer = getattr(block, name)
                    q = quantize_linear(nn.Sequential(layer))[0]
                    setattr(block, name, _PinnedRange(q, bounds[(i, name)], layer.in_features))
            self.serving_, self.serving_device_ = serving, cpu
        elif prec == "fp16":
            self.serving_ = copy.deepcopy(model).half().eval()
            self.serving_device_ = self.device_
        else:
            self.serving_, self.serving_device_ = model, self.device_
        self.serving_precision_ = prec

    def _calibrate(
        self, model: SASRec, seqs: list[np.ndarray], types: list[np.ndarray]
    ) -> dict[tuple[int, str], float]:
        """Largest absolute input of every Linear layer over a sample of training sequences:
        the int8 variant's fixed input ranges (saved with the model, so a variant derived at
        load time, without the training data, gets the same ones)."""
        rng = np.random.default_rng(self.seed)
        pick = rng.choice(len(seqs), min(len(seqs), CALIBRATION_SEQUENCES), replace=False)
        seqs, types = [seqs[i] for i in pick], [types[i] for i in pick]
        bounds: dict[tuple[int, str], float] = {}
        hooks = []
        for i, block in enumerate(model.blocks):
            for name in LINEAR_LAYERS:

                def hook(_mod, args, key=(i, name)):
                    m = float(args[0].detach().abs().max())
                    bounds[key] = max(bounds.get(key, 0.0), m)

                hooks.append(getattr(block, name).register_forward_pre_hook(hook))
        try:
            with torch.inference_mode():
                for start in range(0, len(seqs), 128):
                    tok, typ = self._tokens(seqs[start : start + 128], types[start : start + 128])
                    dev = next(model.parameters()).device
                    model.encode(tok.to(dev), None if typ is None else typ.to(dev))
        finally:
            for h in hooks:
                h.remove()
        return {
            (i, name): max(bounds.get((i, name), 0.0), 1e-3)
            for i in range(len(model.blocks))
            for name in LINEAR_LAYERS
        }

    def quantized(self, precision: str = "int8") -> SequenceStrategy:
        """A copy of this fitted model serving in another precision.

        Parameters
        ----------
        precision : str
            ``fp32``, ``int8`` (with the input ranges calibrated at fit time) or ``fp16``
            (fp32 without CUDA).

        Returns
        -------
        SequenceStrategy
            Shares this model's fp32 weights; only the serving module is new.
        """
        other = type(self)(**{**self.get_params(), "precision": check_precision(precision)})
        other.device_, other.n_items_, other.n_types_ = self.device_, self.n_items_, self.n_types_
        other.model_, other.int8_bounds_ = self.model_, self.int8_bounds_
        other._prepare_serving()
        return other

    def serving_nbytes(self) -> int:
        """Size of the serving module's state_dict.

        Returns
        -------
        int
            Bytes.
        """
        return state_dict_bytes(self.serving_)

    def _tokens(
        self, seqs: list[np.ndarray], types: list[np.ndarray] | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Left-padded (b, L) item and type tokens of the newest ``max_len`` events, L the
        longest of the batch (at least 1)."""
        cut = [s[-self.max_len :] if len(s) > self.max_len else s for s in seqs]
        length = max(1, max((len(s) for s in cut), default=0))
        tok = np.zeros((len(cut), length), np.int64)
        typ = np.zeros((len(cut), length), np.int64) if self.n_types_ and types else None
        for r, s in enumerate(cut):
            if len(s):
                tok[r, length - len(s) :] = np.asarray(s, np.int64) + 1
                if typ is not None:
                    t = np.asarray(types[r][-len(s) :], np.int64)
                    typ[r, length - len(t) :] = t + 1
        return torch.from_numpy(tok), None if typ is None else torch.from_numpy(typ)

    def _user_sequences(self, users: UserBatch) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each user's items oldest first, and their event types where the batch has them
        (else counted as purchases, the strongest positive signal); items the model does not
        know are dropped.

        A batch without a sequence for a user (a caller that built only the matrix) falls back
        to the row's items in index order: the same items, order unknown."""
        m = users.matrix
        seqs = users.sequences or []
        types = users.types or []
        purchase = EVENT_TYPES.index("purchase")
        out_s, out_t = [], []
        for r in range(m.shape[0]):
            s = seqs[r] if r < len(seqs) else None
            t = types[r] if r < len(types) else None
            if s is None:
                s, t = m.indices[m.indptr[r] : m.indptr[r + 1]], None
            s = np.asarray(s, np.int64)
            t = np.full(len(s), purchase) if t is None or len(t) != len(s) else np.asarray(t)
            keep = (s >= 0) & (s < self.n_items_)
            out_s.append(s[keep])
            out_t.append(t[keep].astype(np.int64))
        return out_s, out_t

    @classmethod
    def estimate_cost(
        cls, n_users: int, n_items: int, n_events: int, params: dict[str, Any] | None = None
    ) -> tuple[float, float | None]:
        """Memory: the item table ((I + 1) x dim, 16 bytes a parameter with gradient and Adam)
        and a batch's logits: full softmax (b x max_len x I, three float32 arrays) up to
        ``FULL_SOFTMAX_MAX_ITEMS`` items, sampled (``n_negatives`` columns) beyond; time: one pass
        over the events per epoch (each event a target, ~6 x (logit columns + 12 dim) x dim
        flops), bounded by ``max_seconds``. See ``Strategy.estimate_cost``.
        """
        p = cls._params_with(params)
        d, b, length = int(p["dim"]), int(p["batch_size"]), int(p["max_len"])
        full = p["loss"] == "softmax" or (p["loss"] == "auto" and n_items <= FULL_SOFTMAX_MAX_ITEMS)
        columns = n_items if full else int(p["n_negatives"])
        memory = input_bytes(n_users, n_items, n_events) + 16.0 * (n_items + 1) * d
        memory += 12.0 * b * length * columns + 16.0 * n_events
        seconds = int(p["epochs"]) * 6.0 * n_events * (columns + 12 * d) * d / TORCH_FLOPS
        if p["max_seconds"] is not None:
            seconds = min(seconds, float(p["max_seconds"]))
        return memory, seconds

    def score(self, users: UserBatch) -> np.ndarray:
        """See ``Strategy.score``; reads ``users.sequences`` (and ``users.types``) where given.

        Raises
        ------
        ValueError
            If the batch's matrix width is not the model's number of items.
        """
        if users.matrix.shape[1] != self.n_items_:
            raise ValueError(
                f"sequence: batch has {users.matrix.shape[1]} items, model has {self.n_items_}"
            )
        seqs, types = self._user_sequences(users)
        tok, typ = self._tokens(seqs, types)
        dev = self.serving_device_
        with torch.inference_mode():
            if dev.type != "cpu":
                tok = tok.to(dev)
                typ = typ.to(dev) if typ is not None else None
            model = self.serving_
            h = model.encode(tok, typ)[:, -1]
            return scores_to_numpy(h @ model.item_table().t())

    def similar_items(self, items: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of the (shared input/output) item embeddings.

        See ``Strategy.similar_items``.
        """
        if self._cosine is None:
            self._cosine = ItemCosine(first_row=1)  # row 0 is padding
        return self._cosine.similar_items(self.model_.item_emb.weight, items, n)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """See ``Strategy.save``; the fp32 weights as ``WEIGHTS_FILE`` plus the int8 bounds."""
        save_weights(self.model_, path)
        bounds = [[i, name, b] for (i, name), b in sorted(self.int8_bounds_.items())]
        extra = {"n_items": self.n_items_, "n_types": self.n_types_, "int8_bounds": bounds}
        self._save_params(path, extra)

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
        SequenceStrategy
        """
        meta = cls._load_params(path)
        self = cls(**init_params(meta["params"], precision, device))
        self.device_ = resolve_device(self.device)
        self.n_items_ = int(meta["n_items"])
        self.n_types_ = int(meta["n_types"])
        self.int8_bounds_ = {(int(i), str(n)): float(b) for i, n, b in meta["int8_bounds"]}
        model = self._new_model()
        model.load_state_dict(load_weights(path))
        self.model_ = model.to(self.device_).eval()
        self._prepare_serving()
        return self


def ordered_sequences(data: InteractionData) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each user's positive events, oldest first: what the model trains on.

    Ties in time keep the input order, as ``InteractionData.sequences`` and the store's history
    read (``ORDER BY ts DESC, id DESC``, reversed) do.

    Parameters
    ----------
    data : InteractionData

    Returns
    -------
    seqs : list of numpy.ndarray
        Per user index, the item indices (int64).
    types : list of numpy.ndarray
        Per user index, the event type codes (int64), aligned with ``seqs``.
    """
    pos = data.event_type != DISLIKE
    u, it, et, ts = data.user_idx[pos], data.item_idx[pos], data.event_type[pos], data.ts[pos]
    order = np.lexsort((ts, u))
    u, it, et = u[order], it[order].astype(np.int64), et[order].astype(np.int64)
    bounds = np.searchsorted(u, np.arange(data.n_users + 1))
    seqs = [it[bounds[i] : bounds[i + 1]] for i in range(data.n_users)]
    types = [et[bounds[i] : bounds[i + 1]] for i in range(data.n_users)]
    return seqs, types
