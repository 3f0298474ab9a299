"""EpochSampler: the training order and every item's augmentation follow from the epoch seed alone."""

import random

from lib.datasets.sampler import EpochSampler
from lib.datasets.transforms import sample_crop


def test_the_same_epoch_seed_gives_the_same_order_and_item_seeds():
    a, b = EpochSampler(50), EpochSampler(50)
    assert list(a.epoch(7)) == list(b.epoch(7))
    assert sorted(index for index, _ in a.epoch(7)) == list(range(50))
    assert [i for i, _ in a.epoch(7)] != [i for i, _ in b.epoch(8)]
    # Every bit of the seed counts: run 1's epoch seeds (run seed x 1_000_003 + epoch) are far from run 0's.
    orders = {tuple(i for i, _ in a.epoch(seed)) for seed in (7, 1007, 1_000_003 + 7)}
    assert len(orders) == 3


def test_every_item_draws_new_augmentation_each_epoch_and_unlike_the_other_items():
    epoch_7, epoch_8 = dict(EpochSampler(50).epoch(7)), dict(EpochSampler(50).epoch(8))
    assert len(set(epoch_7.values())) == 50  # no two items of an epoch share a crop and flip
    assert all(epoch_7[index] != epoch_8[index] for index in range(50))  # an item's crop changes every epoch


def test_ddp_shards_cover_the_epoch_with_equal_lengths():
    shards = [EpochSampler(10, rank=r, world_size=3) for r in range(3)]
    items = [list(shard.epoch(1)) for shard in shards]
    assert [len(x) for x in items] == [4, 4, 4] == [len(s) for s in shards]
    assert {index for shard in items for index, _ in shard} == set(range(10))


def test_test_order_is_sequential():
    assert [i for i, _ in EpochSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


def test_crop_boxes_follow_randomresizedcrop_bounds_and_are_reproducible():
    for seed in range(200):
        top, left, h, w, flip = sample_crop(60, 80, random.Random(seed))
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w and h > 0 and w > 0
        assert 0.08 * 0.9 <= h * w / (60 * 80) <= 1.0
        assert (top, left, h, w, flip) == sample_crop(60, 80, random.Random(seed))
    flips = [sample_crop(60, 80, random.Random(s))[4] for s in range(400)]
    assert 150 < sum(flips) < 250


def test_epoch_batches_run_back_to_back_and_match_one_epoch_loaders():
    from lib.datasets.sampler import EpochBatchSampler

    batches = EpochBatchSampler(EpochSampler(10), batch_size=4)
    batches.set_epochs([5, 6])
    stream = list(batches)
    assert batches.batches_per_epoch == 3 and len(batches) == 6 == len(stream)
    assert [len(b) for b in stream] == [4, 4, 2, 4, 4, 2]  # each epoch ends with its own short batch
    for seed, epoch in ((5, stream[:3]), (6, stream[3:])):
        assert [item for batch in epoch for item in batch] == list(EpochSampler(10).epoch(seed))


def test_crop_aspect_ratios_and_areas_span_randomresizedcrops_ranges():
    boxes = [sample_crop(1000, 1000, random.Random(seed)) for seed in range(2000)]
    ratios = [w / h for _, _, h, w, _ in boxes]
    areas = [h * w / 1000**2 for _, _, h, w, _ in boxes]
    assert 3 / 4 - 0.01 <= min(ratios) < 0.8 and 1.25 < max(ratios) <= 4 / 3 + 0.01
    assert 0.46 < sum(r < 1 for r in ratios) / len(ratios) < 0.54  # log-uniform: as many tall crops as wide ones
    assert 0.08 - 0.01 <= min(areas) < 0.1 and max(areas) > 0.9


def test_no_two_items_of_nearby_epochs_share_an_item_seed_or_a_crop():
    # A run's epochs have consecutive epoch seeds (trainer.epoch_seed): an item seed of epoch seed + index would
    # give item i at epoch e + 1 the crop of item i + 1 at epoch e.
    sampler = EpochSampler(50)
    seeds = [seed for epoch in range(7, 12) for _, seed in sampler.epoch(epoch)]
    assert len(set(seeds)) == len(seeds) == 250
    assert len({sample_crop(375, 500, random.Random(seed)) for seed in seeds}) == 250
