"""Text normalisation shared by exact and near-duplicate detection."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, lower case, punctuation dropped, runs of whitespace made one space: copies that differ only
    in case, spacing or punctuation become the same string."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCTUATION.sub(" ", text)).strip()


def exact_key(normalized: str) -> bytes:
    """A 16-byte digest of the normalised text: equal keys are exact duplicates."""
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def shingles(normalized: str, size: int) -> set[bytes]:
    """The set of `size`-word shingles (a text shorter than `size` words is one shingle)."""
    words = normalized.split(" ")
    if len(words) <= size:
        return {normalized.encode("utf-8")}
    return {" ".join(words[i: i + size]).encode("utf-8") for i in range(len(words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0
