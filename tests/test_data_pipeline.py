"""Grain pipeline: determinism, checkpointed iterator state, aligned crops, sharding on 4 simulated CPU devices."""

import json
import os

import jax
import numpy as np
import pytest

import jsr.data as data
from jsr.data import pipeline, sources
from jsr.parallel import batch_sharding, make_mesh

SCALE = 4


def tagged_source(n=10, hr=32, sizes=None):
    """Records whose first HR pixel holds their index; LR = HR[::4, ::4], so aligned crops keep that relation."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        h, w = sizes[i] if sizes else (hr, hr)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[0, 0] = i
        pairs.append((f"r{i}", image, np.ascontiguousarray(image[::SCALE, ::SCALE])))
    return sources.ArraySource(pairs)


def take(it, k):
    return [jax.tree.map(np.asarray, next(it)) for _ in range(k)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def iterator(source, seed=0, patch=4, batch=4, threads=2, **kw):
    return pipeline.make_device_iterator(
        source,
        make_mesh(),
        global_batch_size=batch,
        seed=seed,
        patch_size=patch,
        scale=SCALE,
        num_threads=threads,
        **kw,
    )


def test_same_seed_same_batches_other_seed_other_batches():
    source = tagged_source()
    a, b, c = take(iterator(source, 1), 4), take(iterator(source, 1, threads=1), 4), take(iterator(source, 2), 4)
    assert_batches_equal(a, b)
    assert not all(np.array_equal(x["hr"], y["hr"]) for x, y in zip(a, c, strict=True))


def test_restored_state_continues_exactly_across_an_epoch_boundary():
    source = tagged_source(n=10)
    it = iterator(source, seed=3, device_prefetch=2)
    take(it, 3)  # 12 records: already inside the second epoch
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = take(it, 4)
    resumed = iterator(source, seed=3, device_prefetch=0)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 4), expected)
    # Restoring into the SAME iterator (prefetched batches in flight) also rewinds exactly.
    it.set_state(state)
    assert_batches_equal(take(it, 4), expected)


def test_state_counts_batches_and_a_state_of_another_format_is_refused():
    source = tagged_source(n=10)
    it = iterator(source, seed=3, batch=4)
    take(it, 3)
    assert it.get_state() == {"format": 3, "grain": {"next_index": 3}}
    expected = take(it, 2)
    resumed = iterator(source, seed=3, batch=4)
    resumed.set_state({"format": 3, "grain": {"next_index": 3}})
    assert_batches_equal(take(resumed, 2), expected)
    for other in ({"next_index": 12}, {"format": 2, "grain": {"next_index": 3}}, {"format": 99, "grain": {}}):
        with pytest.raises(ValueError, match="another jsr version"):
            resumed.set_state(other)


def test_more_threads_than_batches_in_flight_and_batches_spanning_many_epochs_match_one_thread():
    source = tagged_source(n=3, hr=16)  # a batch of 8 spans ~3 epochs; 6 threads, 2 batches prefetched
    many = take(iterator(source, seed=5, patch=2, batch=8, threads=6, prefetch_batches=2), 12)
    one = take(iterator(source, seed=5, patch=2, batch=8, threads=1), 12)
    assert_batches_equal(many, one)


def test_batches_land_with_the_batch_sharding_on_four_devices():
    mesh = make_mesh()
    assert mesh.devices.size == 4
    batch = next(iterator(tagged_source(), batch=8))
    assert batch["hr"].shape == (8, 16, 16, 3) and batch["lr"].shape == (8, 4, 4, 3)
    assert batch["hr"].dtype == np.uint8
    for key in ("hr", "lr"):
        assert batch[key].sharding.is_equivalent_to(batch_sharding(mesh), batch[key].ndim)
        assert len({s.device for s in batch[key].addressable_shards}) == 4


def test_crops_are_aligned():
    for b in take(iterator(tagged_source(hr=48), patch=5, batch=4), 3):
        np.testing.assert_array_equal(b["lr"], b["hr"][:, ::SCALE, ::SCALE])


def test_one_epoch_sees_every_record_once_in_a_shuffled_order():
    source = tagged_source(n=8)
    batches = take(iterator(source, seed=0, patch=0), 4)
    first_epoch = np.concatenate([b["hr"][:, 0, 0, 0] for b in batches[:2]])
    second_epoch = np.concatenate([b["hr"][:, 0, 0, 0] for b in batches[2:]])
    assert sorted(first_epoch) == list(range(8)) and sorted(second_epoch) == list(range(8))
    assert list(first_epoch) != list(range(8)) and list(first_epoch) != list(second_epoch)


def test_every_epoch_of_many_is_a_permutation_and_an_empty_source_is_refused():
    shuffle = pipeline.EpochShuffle(tagged_source(n=5), seed=3)
    orders = [[int(shuffle(epoch * 5 + i)["hr"][0, 0, 0]) for i in range(5)] for epoch in range(12)]
    assert all(sorted(order) == list(range(5)) for order in orders)
    assert len({tuple(order) for order in orders}) > 6  # fresh orders, not one reused
    # the same (seed, position) gives the same record whatever was asked before (prefetch threads jump around)
    fresh = pipeline.EpochShuffle(tagged_source(n=5), seed=3)
    assert [int(fresh(p)["hr"][0, 0, 0]) for p in (57, 3, 31)] == [orders[p // 5][p % 5] for p in (57, 3, 31)]
    with pytest.raises(ValueError, match="no records"):
        pipeline.EpochShuffle(sources.ArraySource([]), seed=0)


@pytest.mark.parametrize("patch", [0, 3])
def test_processes_split_each_global_batch_into_disjoint_rows(patch):
    source = tagged_source(n=9, hr=48)

    def first_batches(shard, batch):
        ds = pipeline.train_dataset(
            source, batch_size=batch, seed=0, patch_size=patch, scale=SCALE, shard=shard, num_threads=1
        )
        it = iter(ds)
        return [next(it) for _ in range(3)]

    single = first_batches((0, 1), 4)
    halves = [first_batches((index, 2), 2) for index in range(2)]
    for step in range(3):
        # process 0 holds the first half of the global batch, process 1 the second: the same global batch, crops too
        for key in ("hr", "lr"):
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, single[step][key])
    if not patch:
        ids = [[int(v) for v in b["hr"][:, 0, 0, 0]] for b in single]
        assert len(set(ids[0] + ids[1])) == 8  # the first 8 positions lie in epoch 0: 8 different records


def test_random_crops_reach_every_offset_and_long_runs_keep_few_epoch_orders():
    """The crop offset of each record is uniform over all valid positions (the corners included); the shuffle
    keeps only a few epochs' orders, however long the run (a cache growing with the run slowed the loop 2x)."""
    lr_side, patch = 8, 3
    hr = np.arange(lr_side * SCALE)[None, :, None] * np.ones((lr_side * SCALE, 1, 3))  # value = HR column
    hr = (hr + 100 * np.arange(lr_side * SCALE)[:, None, None] // SCALE).astype(np.uint16)  # + 100 * LR row
    source = sources.ArraySource([("a", hr, hr[::SCALE, ::SCALE]), ("b", hr, hr[::SCALE, ::SCALE])])
    crop = pipeline.CropBatch(source, seed=0, batch_size=16, patch=patch, scale=SCALE)
    tops, lefts = set(), set()
    for j in range(200):
        batch = crop(j)
        np.testing.assert_array_equal(batch["lr"], batch["hr"][:, ::SCALE, ::SCALE])
        tops.update((batch["lr"][:, 0, 0, 0] // 100).tolist())
        lefts.update((batch["lr"][:, 0, 0, 0] % 100 // SCALE).tolist())
    assert tops == lefts == set(range(lr_side - patch + 1))
    assert len(crop.records._orders) <= pipeline.EpochShuffle.KEEP_EPOCHS  # 1,600 epochs visited


def test_whole_images_of_different_sizes_fail_with_advice():
    source = tagged_source(n=4, sizes=[(32, 32), (32, 40), (32, 32), (32, 40)])
    with pytest.raises(ValueError, match="patch_size"):
        take(iterator(source, patch=0, batch=4), 1)


def test_eval_batches_cover_every_record_once_with_a_mask():
    source = tagged_source(n=6, sizes=[(32, 32)] * 3 + [(24, 32)] * 3)
    out = list(
        pipeline.eval_batches(source, make_mesh(), global_batch_size=4, patch_size=0, scale=SCALE, with_ids=True)
    )
    assert [b["hr"].shape for b, _ in out] == [(4, 32, 32, 3), (4, 24, 32, 3)]  # one batch per size
    ids = [i for _, batch_ids in out for i in batch_ids]
    assert ids == [f"r{i}" for i in range(6)]
    masks = [np.asarray(b["mask"]).tolist() for b, _ in out]
    assert masks == [[1, 1, 1, 0], [1, 1, 1, 0]]
    assert out[0][0]["mask"].sharding.is_equivalent_to(batch_sharding(make_mesh()), 1)


def test_eval_centre_crops_are_centred_and_aligned():
    source = tagged_source(n=2, hr=48)
    batch = next(pipeline.eval_batches(source, make_mesh(), global_batch_size=4, patch_size=4, scale=SCALE))
    full = source[0]["hr"]
    np.testing.assert_array_equal(np.asarray(batch["hr"])[0], full[16:32, 16:32])  # LR 12 -> offset 4 -> HR 16
    np.testing.assert_array_equal(np.asarray(batch["lr"]), np.asarray(batch["hr"])[:, ::SCALE, ::SCALE])


def test_samples_source_through_the_public_api():
    cfg = data.default_data_config()
    cfg.patch_size = 8
    train, val = data.make_source(cfg, "train"), data.make_source(cfg, "validation")
    train_ids = {train[i]["id"] for i in range(len(train))}
    val_ids = {val[i]["id"] for i in range(len(val))}
    assert len(train_ids) >= 5 and val_ids and not train_ids & val_ids
    for source in (train, val):
        for i in range(len(source)):
            r = source[i]
            assert r["hr"].dtype == np.uint8 and r["hr"].shape[2] == 3
            assert r["hr"].shape[:2] == (SCALE * r["lr"].shape[0], SCALE * r["lr"].shape[1])
    it = data.make_train_iterator(cfg, batch_size=4, seed=0, mesh=make_mesh(), source=train)
    batch = next(it)
    assert batch["hr"].shape == (4, 32, 32, 3) and batch["lr"].shape == (4, 8, 8, 3)
    it.close()


@pytest.mark.parametrize("name", sorted(sources.SAMPLE_FILES))
def test_sample_photos_read_as_scikit_image_loads_them(name):
    import skimage.data

    if name.startswith("motorcycle_"):
        expected = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
    else:
        expected = getattr(skimage.data, name)()
    got = sources._sample_photo(name)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_sample_photos_cover_every_split():
    assert {n for names in sources.SAMPLE_NAMES.values() for n in names} == set(sources.SAMPLE_FILES)


def test_patch_larger_than_the_samples_fails_before_training():
    cfg = data.default_data_config()
    cfg.patch_size = 1000
    with pytest.raises(ValueError, match="smaller than the crop"):
        data.make_source(cfg, "train")


def test_augment_config_gives_per_example_params():
    cfg = data.default_data_config().augment
    assert all(float(np.abs(v).max()) == 0 for v in data.augment_params(cfg, 3).values())
    cfg.enabled = True
    cfg.rotation_deg = 30.0
    cfg.translate = (0.1, 0.2)
    params = data.augment_params(cfg, 3)
    assert params["rotation_deg"].shape == (3,) and params["translate"].shape == (3, 2)
    np.testing.assert_allclose(np.asarray(params["translate"])[1], [0.1, 0.2])
    np.testing.assert_allclose(data.augment_fill(cfg), [1.0, 1.0, 1.0])


def test_host_threads_default_follows_the_cores_and_an_explicit_count_wins():
    cfg = data.default_data_config()
    assert data.host_threads(cfg) == min(8, os.cpu_count() or 1)
    cfg.num_threads = 3
    assert data.host_threads(cfg) == 3
