"""Stage 0, curation: raw documents -> a clean, deduplicated, weighted corpus (GPT-3's recipe).

text.py      normalisation, exact-duplicate keys, word shingles
dedup.py     MinHash signatures (datasketch) in worker processes, LSH banding, clusters
quality.py   hashed n-grams + logistic regression: reference (positive) vs crawl; Pareto keep rule
mixture.py   per-source sampling weights over a token budget, epochs, sharded output
scoring.py   precision / recall / ROC AUC against a known truth (the built-in crawl)
The stage that strings them together is chatforge/stages/curate.py.
"""
