import itertools

from chatforge.data.packing import IGNORE_INDEX, PackedBlocks, token_stream, validation_batches
from chatforge.models.io import load_tokenizer


def test_blocks_cover_the_stream_without_loss(toy_corpus, toy_tokenizer_dir):
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    joined = [t for ids in token_stream(toy_corpus[0], tokenizer, "text") for t in ids]
    blocks = PackedBlocks(toy_corpus[0], tokenizer, seq_len=32, shuffle_buffer=1)
    # with a buffer of one block the order is the file order: consecutive blocks overlap by one token
    first = list(itertools.islice(blocks.epoch(0), 3))
    assert all(len(b) == 33 for b in first)
    assert first[0] + first[1][1:] + first[2][1:] == joined[: 32 * 3 + 1]
    assert tokenizer.eos_token_id in joined


def test_shuffle_is_a_function_of_seed_and_epoch(toy_corpus, toy_tokenizer_dir):
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    a = PackedBlocks(toy_corpus[0], tokenizer, seq_len=32, shuffle_buffer=64, seed=1)
    b = PackedBlocks(toy_corpus[0], tokenizer, seq_len=32, shuffle_buffer=64, seed=1)
    assert list(a.epoch(0)) == list(b.epoch(0))
    assert list(a.epoch(0)) != list(a.epoch(1))
    assert sorted(map(tuple, a.epoch(0))) == sorted(map(tuple, a.epoch(1)))  # same blocks, new order


def test_skip_resumes_exactly(toy_corpus, toy_tokenizer_dir):
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    blocks = PackedBlocks(toy_corpus[0], tokenizer, seq_len=32, shuffle_buffer=16, seed=2)
    full = blocks.batches(4)
    expected = [next(full) for _ in range(5)]
    resumed = blocks.batches(4, skip_blocks=12)
    assert (next(resumed) == expected[3]).all() and (next(resumed) == expected[4]).all()


def test_validation_counts_every_token_once(toy_corpus, toy_tokenizer_dir):
    tokenizer = load_tokenizer(toy_tokenizer_dir)
    batches = validation_batches(toy_corpus[1], tokenizer, seq_len=32, max_tokens=100, batch_size=2)
    targets = [t for _, y in batches for t in y.flatten().tolist() if t != IGNORE_INDEX]
    assert len(targets) == 100
