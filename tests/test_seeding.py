"""The one sampler every stage draws its batches from, and the seeds of each draw."""

import itertools

from salsa.seeding import batch_stream, derive_seed, epoch_order


def _take(stream, n):
    return list(itertools.islice(stream, n))


def test_batches_have_the_size_asked_and_each_item_once_per_epoch():
    batches = _take(batch_stream([1] * 10, 3, seed=1), 10)  # 30 items: three epochs of 10
    assert all(len(b) == 3 for b in batches)
    flat = [i for b in batches for i in b]
    for epoch in range(3):
        assert flat[10 * epoch : 10 * epoch + 10] == epoch_order(10, 1, epoch)
    assert epoch_order(10, 1, 0) != epoch_order(10, 1, 1)  # a fresh order every epoch


def test_a_resumed_stream_continues_exactly_and_seeds_differ():
    first = _take(batch_stream([1] * 10, 3, seed=1), 7)
    assert _take(batch_stream([1] * 10, 3, seed=1, start=4), 3) == first[4:]
    assert _take(batch_stream([1] * 10, 3, seed=2), 4) != first[:4]


def test_derived_seeds_depend_on_every_part_of_where():
    seeds = {derive_seed(s, name, i) for s in (0, 1) for name in ("sample", "epoch") for i in (0, 1, 2)}
    assert len(seeds) == 12 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(3, "sample", 5) == derive_seed(3, "sample", 5)
    # The old scheme seed * 1_000_003 + step collided across seeds; derived seeds do not.
    assert derive_seed(0, "sample", 1_000_003) != derive_seed(1, "sample", 0)
