"""Normalisation, MinHash band keys and clustering."""

import numpy as np

from chatforge.curate.dedup import MinHashParams, cluster, signature_chunk, signature_stream, shingle_hashes
from chatforge.curate.text import exact_key, jaccard, normalize, shingles

BASE = ("Borin lives in Trask and works as a baker. Every morning he walks to the square, buys bread and "
        "talks with the miller about the weather, the river and the coming harvest festival in the valley.")


def test_normalize_makes_case_spacing_and_punctuation_copies_equal():
    assert normalize("Hello,  World!\n") == "hello world"
    assert exact_key(normalize(BASE)) == exact_key(normalize(BASE.lower().replace(" ", "  ")))
    assert exact_key(normalize(BASE)) != exact_key(normalize(BASE + " again"))


def test_shingles_and_jaccard_by_hand():
    assert shingles("a b c d", 3) == {b"a b c", b"b c d"}
    assert shingles("a b", 3) == {b"a b"}
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    # hashed shingles: one per window, equal windows hash equal
    hashes = shingle_hashes("a b c a b c", 3)
    assert len(hashes) == 4 and hashes[0] == hashes[3] and len(set(hashes.tolist())) == 3


def test_near_duplicates_cluster_and_the_first_is_kept():
    edited = BASE.replace("bread", "cheese")
    other = "A completely different page about a fisher called Zubri who keeps an owl and loves plums very much indeed."
    params = MinHashParams(shingle_size=3, threshold=0.5)
    exact, keys = signature_chunk([other, BASE, edited, other.upper()], params)
    assert exact[0] == exact[3] and exact[1] != exact[2]
    clusters = cluster(keys[[0, 1, 2]])
    assert clusters.removed.tolist() == [2]
    assert clusters.keeper.tolist() == [0, 1, 1]


def test_workers_give_the_same_keys_as_one_process():
    texts = [f"{BASE} version {i}" for i in range(40)]
    chunks = [texts[i: i + 7] for i in range(0, len(texts), 7)]
    params = MinHashParams()
    one = np.concatenate([keys for _, _, keys in signature_stream(chunks, params, workers=1)])
    two = np.concatenate([keys for _, _, keys in signature_stream(chunks, params, workers=2)])
    assert one.shape == (40, params.banding[0]) and (one == two).all()
    order = [t for chunk, _, _ in signature_stream(chunks, params, workers=2) for t in chunk]
    assert order == texts
