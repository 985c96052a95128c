"""Exact and near-duplicate detection: MinHash signatures (datasketch) and LSH banding into clusters.

Signatures are computed in worker processes, chunk by chunk, with at most two chunks per worker in
flight, so documents stream through with bounded memory. For each document we keep only its LSH
band keys (bands x 8 bytes), not the signature or the text. Two documents whose keys agree in any
band are linked; the connected components of those links are the clusters, and the first document
of each cluster is kept. The banding (bands x rows) is the one datasketch's MinHashLSH picks for the
threshold. We band with a sort instead of MinHashLSH's in-memory index because that index holds
about 5 KB of Python objects per document against our 8 bytes a band
(benchmarks/curate_dedup_throughput.py measures both).
"""

from __future__ import annotations

import functools
import multiprocessing
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from chatforge.curate.text import exact_key, normalize

_BAND_MIX = np.random.RandomState(20260101).randint(1, 2**62, size=4096, dtype=np.int64).astype(np.uint64) | np.uint64(1)


@dataclass(frozen=True)
class MinHashParams:
    """How documents are compared: word shingles of `shingle_size`, `num_perm` hash functions,
    and a Jaccard `threshold` that sets the LSH banding."""

    shingle_size: int = 5
    num_perm: int = 128
    threshold: float = 0.7
    seed: int = 1

    @property
    def banding(self) -> tuple[int, int]:
        """(bands, rows per band) as datasketch's MinHashLSH chooses them for this threshold."""
        return _banding(self.threshold, self.num_perm)


@functools.lru_cache(maxsize=None)
def _banding(threshold: float, num_perm: int) -> tuple[int, int]:
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)  # it optimises the banding once, on creation
    return lsh.b, lsh.r


def shingle_hashes(normalized: str, size: int) -> np.ndarray:
    """32-bit hashes (in uint64) of the text's `size`-word shingles: crc32 per word, then a
    multiply-add over each window in numpy, ~10x faster than datasketch's sha1 per shingle string."""
    words = normalized.split(" ")
    word_hashes = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
    if len(words) < size:
        word_hashes = np.pad(word_hashes, (0, size - len(words)))
    windows = np.lib.stride_tricks.sliding_window_view(word_hashes, size)  # (n_shingles, size)
    mixed = (windows * _BAND_MIX[:size]).sum(axis=1, dtype=np.uint64)
    return (mixed ^ (mixed >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def _already_hashed(value):
    return value


def signature_chunk(texts: list[str], params: MinHashParams) -> tuple[list[bytes], np.ndarray]:
    """For a chunk of raw texts: exact keys of the normalised texts and LSH band keys (n, bands) uint64."""
    bands, rows = params.banding
    normalized = [normalize(text) for text in texts]
    sketches = MinHash.bulk([shingle_hashes(text, params.shingle_size).tolist() for text in normalized],
                            num_perm=params.num_perm, seed=params.seed, hashfunc=_already_hashed)
    signatures = np.stack([s.hashvalues for s in sketches]).astype(np.uint64)  # (n, num_perm)
    banded = signatures[:, : bands * rows].reshape(len(texts), bands, rows)
    # one 64-bit key per band: a multiply-add hash of its rows (wrapping arithmetic)
    keys = (banded * _BAND_MIX[: bands * rows].reshape(bands, rows)).sum(axis=2, dtype=np.uint64)
    return [exact_key(text) for text in normalized], keys


def signature_stream(chunks: Iterable[list[str]], params: MinHashParams, workers: int
                     ) -> Iterator[tuple[list[str], list[bytes], np.ndarray]]:
    """(texts, exact keys, band keys) per chunk, in order; `workers` > 1 computes them in that many processes."""
    if workers <= 1:
        for texts in chunks:
            yield texts, *signature_chunk(texts, params)
        return
    # "fork" is cheapest where it exists; workers only run signature_chunk, which needs no parent state
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        pending: deque = deque()
        for texts in chunks:
            pending.append((texts, pool.apply_async(signature_chunk, (texts, params))))
            if len(pending) >= 2 * workers:  # bounded: never read far ahead of the workers
                done_texts, result = pending.popleft()
                yield done_texts, *result.get()
        while pending:
            done_texts, result = pending.popleft()
            yield done_texts, *result.get()


@dataclass
class Clusters:
    """Near-duplicate clusters over n documents (numbered in stream order)."""

    labels: np.ndarray  # (n,) cluster of each document
    keeper: np.ndarray  # (n,) the document kept for each document's cluster (itself when kept)

    @property
    def removed(self) -> np.ndarray:
        """Indices of the documents dropped as near-duplicates of an earlier one."""
        return np.flatnonzero(self.keeper != np.arange(len(self.keeper)))


def cluster(band_keys: np.ndarray) -> Clusters:
    """Link documents that share a band key, take connected components, keep the first of each."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = band_keys.shape[0]
    sources, targets = [], []
    for band in range(band_keys.shape[1]):
        order = np.argsort(band_keys[:, band], kind="stable")
        sorted_keys = band_keys[order, band]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        sources.append(order[same])
        targets.append(order[same + 1])
    rows = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(targets) if targets else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    return Clusters(labels=labels, keeper=first[labels])
