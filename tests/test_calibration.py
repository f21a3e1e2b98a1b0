import numpy as np
import pytest

from evo.data.ccds import CalibrationConfig, CCDSSampler, allocate_quotas, build_calibration_set
from evo.data.calibset import CalibrationSet
from evo.data.corpus import read_corpus
from evo.errors import EvoError
from evo.modelio import load_model


def blobs(sizes=(60, 25, 10, 5), dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(sizes), dim)) * 10
    points = np.concatenate([c + rng.normal(size=(n, dim)) for c, n in zip(centers, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return points, labels


@pytest.mark.parametrize("sizes, count", [((60, 25, 10, 5), 8), ((5, 5, 5), 15), ((100, 1, 1), 3), ((50, 30, 20), 2)])
def test_quotas_cover_clusters_and_sum(sizes, count):
    quotas = allocate_quotas(np.array(sizes), count)
    assert quotas.sum() == count
    assert np.all(quotas <= np.array(sizes))
    if count >= len(sizes):
        assert np.all(quotas >= 1)


def test_ccds_covers_every_cluster_even_small_ones():
    points, truth = blobs()
    sampler = CCDSSampler(n_samples=8, n_clusters=4, n_heldout=8, random_state=0).fit(points)
    selection = sampler.sample()
    assert len(set(sampler.labels_[selection.calibration])) == 4
    assert len(set(truth[selection.calibration])) == 4  # blobs are recovered, so sources are covered
    assert not set(selection.calibration) & set(selection.heldout)
    assert len(selection.heldout) == 8


def test_nearest_picks_the_most_central_member():
    points, _ = blobs()
    sampler = CCDSSampler(n_samples=4, n_clusters=4, n_heldout=0, within_cluster="nearest", random_state=0).fit(points)
    chosen = sampler.sample().calibration
    for index in chosen:
        members = np.flatnonzero(sampler.labels_ == sampler.labels_[index])
        assert sampler.distances_[index] == sampler.distances_[members].min()


def test_spread_reaches_every_mode_inside_a_cluster():
    # one cluster made of a big and a small sub-blob: "nearest" takes only the big one's centre
    rng = np.random.default_rng(0)
    big = rng.normal(size=(90, 2)) * 0.3
    small = rng.normal(size=(10, 2)) * 0.3 + np.array([4.0, 0.0])
    points = np.concatenate([big, small])
    spread = CCDSSampler(n_samples=2, n_clusters=1, n_heldout=0, random_state=0).fit(points).sample().calibration
    nearest = CCDSSampler(n_samples=2, n_clusters=1, n_heldout=0, within_cluster="nearest",
                          random_state=0).fit(points).sample().calibration
    assert {int(i >= 90) for i in spread} == {0, 1}
    assert {int(i >= 90) for i in nearest} == {0}


def test_random_strategy_draws_same_sizes_disjoint():
    points, _ = blobs()
    selection = CCDSSampler(n_samples=10, n_clusters=4, n_heldout=5, strategy="random", random_state=3).fit(points).sample()
    assert len(selection.calibration) == 10 and len(selection.heldout) == 5
    assert not set(selection.calibration) & set(selection.heldout)


def test_auto_k_by_silhouette_finds_the_blobs():
    rng = np.random.default_rng(1)
    centers = np.eye(3, 4) * 20
    points = np.concatenate([c + rng.normal(size=(40, 4)) for c in centers])
    sampler = CCDSSampler(n_samples=6, n_clusters="auto", n_heldout=0, random_state=0).fit(points)
    assert sampler.n_clusters_ == 3
    assert max(sampler.silhouette_scores_, key=sampler.silhouette_scores_.get) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_samples=3, n_clusters=4), "smaller than --clusters"),
        (dict(n_samples=8, n_clusters=200), "larger than the 100 sequences"),
        (dict(n_samples=90, n_clusters=4, n_heldout=20), "exceed the 100 sequences"),
    ],
)
def test_sampler_size_errors(kwargs, message):
    points, _ = blobs()
    with pytest.raises(EvoError, match=message):
        CCDSSampler(**kwargs).fit(points)


def _build(tiny_model_dir, text_corpus, seed=0, **overrides):
    loaded = load_model(str(tiny_model_dir("llama")))
    corpus = read_corpus([str(text_corpus)])
    config = CalibrationConfig(**{**dict(samples=6, clusters=3, heldout=4, seq_len=32, seed=seed), **overrides})
    return build_calibration_set(loaded, corpus, config)


def test_calibration_set_provenance_and_round_trip(tiny_model_dir, text_corpus, tmp_path):
    calibration_set = _build(tiny_model_dir, text_corpus)
    assert calibration_set.calibration.token_ids.shape == (6, 32)
    assert len(calibration_set.heldout) == 4
    assert {c.drawn >= 1 for c in calibration_set.clusters} == {True}
    assert not set(calibration_set.calibration.pool_indices) & set(calibration_set.heldout.pool_indices)
    prov = calibration_set.provenance
    assert prov.seq_len == 32 and prov.n_clusters == 3 and prov.embedding_layer == 1
    assert prov.corpus_sha256 == read_corpus([str(text_corpus)]).sha256
    path = calibration_set.save(tmp_path / "cal.json")
    again = CalibrationSet.load(path)
    assert again.to_dict() == calibration_set.to_dict()
    np.testing.assert_array_equal(again.calibration.token_ids, calibration_set.calibration.token_ids)


def test_same_seed_gives_byte_identical_files(tiny_model_dir, text_corpus, tmp_path):
    first = _build(tiny_model_dir, text_corpus, seed=7).save(tmp_path / "a.json")
    second = _build(tiny_model_dir, text_corpus, seed=7).save(tmp_path / "b.json")
    assert first.read_bytes() == second.read_bytes()
    third = _build(tiny_model_dir, text_corpus, seed=8, strategy="random").save(tmp_path / "c.json")
    assert third.read_bytes() != first.read_bytes()


def test_corrupt_calibration_file_is_refused(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text('{"format": "evo.calibration_set", "format_version": 1, "provenance": {}}')
    with pytest.raises(EvoError, match="corrupt"):
        CalibrationSet.load(path)
    with pytest.raises(EvoError, match="does not exist"):
        CalibrationSet.load(tmp_path / "missing.json")
