"""Item text features: the text we index per item and a TF-IDF item matrix.

The fitted vectoriser is not needed at serve time: strategies keep the (sparse, row-normalised)
item matrix, so nothing has to be pickled.
"""

from __future__ import annotations

import re

import numpy as np
import scipy.sparse as sp

from features.interactions import ItemMeta

_SPACE = re.compile(r"\s+")


def item_text(meta: ItemMeta, i: int, category_repeat: int = 2) -> str:
    """Title + description + categories of item i. Categories are repeated so that a shared
    category weighs about as much as a shared title word.

    Parameters
    ----------
    meta : ItemMeta
        Item metadata.
    i : int
        Item index.
    category_repeat : int
        Times each category's words are repeated.

    Returns
    -------
    str
        The text, whitespace collapsed to single spaces.
    """
    cats = " ".join(
        " ".join(c.replace("/", " ").replace(">", " ") for c in meta.categories[i])
        for _ in range(category_repeat)
    )
    return _SPACE.sub(" ", f"{meta.titles[i]} {meta.descriptions[i]} {cats}").strip()


def item_texts(meta: ItemMeta, category_repeat: int = 2) -> list[str]:
    """The text of every item (``item_text``), in index order.

    Parameters
    ----------
    meta : ItemMeta
        Item metadata.
    category_repeat : int
        Times each category's words are repeated.

    Returns
    -------
    list of str
        One text per item index, ``len(meta.titles)`` in all.
    """
    return [item_text(meta, i, category_repeat) for i in range(len(meta.titles))]


def tfidf_matrix(
    texts: list[str],
    min_df: int = 1,
    max_df: float = 0.5,
    ngram_max: int = 1,
    max_features: int | None = 50_000,
    sublinear_tf: bool = True,
) -> sp.csr_matrix:
    """TF-IDF item matrix, rows L2-normalised (cosine = dot product).

    Items with no text get an all-zero row.

    Parameters
    ----------
    texts : list of str
        One text per item index (``item_texts``).
    min_df : int
        Minimum document frequency of a term (``TfidfVectorizer``).
    max_df : float
        Maximum document frequency of a term, as a share of items (1.0 for a single item).
    ngram_max : int
        Longest word n-gram.
    max_features : int or None
        Most frequent terms kept; ``None``: all.
    sublinear_tf : bool
        Use ``1 + log(tf)`` term frequencies.

    Returns
    -------
    scipy.sparse.csr_matrix of float32, shape (n_items, n_terms)
        ``n_terms`` is 0 when no item has text. When ``min_df``/``max_df`` prune every term,
        all terms are kept instead.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not any(t.strip() for t in texts):
        return sp.csr_matrix((len(texts), 0), dtype=np.float32)
    vec = TfidfVectorizer(
        min_df=min_df,
        max_df=max_df if len(texts) > 1 else 1.0,
        ngram_range=(1, ngram_max),
        max_features=max_features,
        sublinear_tf=sublinear_tf,
        dtype=np.float32,
        token_pattern=r"(?u)\b\w[\w'-]*\b",
    )
    try:
        m = vec.fit_transform(texts)
    except ValueError:
        # Every term pruned by min_df/max_df (tiny catalogues): keep all terms instead.
        vec.set_params(min_df=1, max_df=1.0)
        m = vec.fit_transform(texts)
    return sp.csr_matrix(m, dtype=np.float32)
