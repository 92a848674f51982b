import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import chisquare

from ltseg.data.samplers import ClassAwareSampler, RepeatFactorSampler, TrainingSampler, repeat_factors

CONF = Path(__file__).resolve().parents[2] / "conf" / "sampler"


class FakeDataset:
    def __init__(self, labels):
        self.labels = [np.asarray(v, dtype=np.int64) for v in labels]

    def __len__(self):
        return len(self.labels)

    def image_labels(self, i):
        return np.unique(self.labels[i])


def long_tail(n=1000):
    """class 0 in 900 images, class 1 in 50, class 2 in 2 (one with class 0), 48 empty images."""
    labels = [[0]] * 899 + [[0, 2], [2]] + [[1, 1]] * 50 + [[]] * 49
    return FakeDataset(labels[:n])


def take(sampler, k):
    return list(itertools.islice(iter(sampler), k))


# ---------------------------------------------------------------------- RFS
@pytest.mark.parametrize("sqrt", [True, False])
def test_rfs_factors_match_formula(sqrt):
    ds, t = long_tail(), 0.1
    s = RepeatFactorSampler(ds, repeat_thresh=t, sqrt=sqrt)
    f = {0: 900 / 1000, 1: 50 / 1000, 2: 2 / 1000}
    r = {c: max(1.0, math.sqrt(t / fc) if sqrt else t / fc) for c, fc in f.items()}
    expected = [max((r[c] for c in set(lab.tolist())), default=1.0) for lab in ds.labels]
    assert s.factors.dtype == torch.float32
    np.testing.assert_allclose(s.factors.numpy(), np.float32(expected), rtol=0, atol=0)
    assert s.factors[899] == np.float32(r[2]) and s.factors[-1] == 1.0        # max over classes; empty -> 1
    assert abs(float(s.factors[899]) - (math.sqrt(50) if sqrt else 50.0)) < 1e-5


def test_rfs_default_threshold_and_config():
    cfg = OmegaConf.load(CONF / "rfs.yaml")
    assert cfg.repeat_thresh == 0.001 and cfg.sqrt is True
    s = instantiate(cfg, dataset=long_tail(), seed=3, rank=0, world_size=1)
    assert isinstance(s, RepeatFactorSampler) and s.repeat_thresh == 0.001


def test_rfs_stochastic_rounding_per_epoch():
    ds = FakeDataset([[0]] * 6 + [[1]] + [[2]] * 3)
    s = RepeatFactorSampler(ds, seed=1, repeat_thresh=0.5)         # f_1 = 0.1 -> r = sqrt(5) = 2.236
    epochs = list(itertools.islice(s.epochs(), 400))
    counts = np.array([np.bincount(e, minlength=10) for e in epochs])
    fac = s.factors.numpy()
    assert np.all((counts == np.floor(fac)) | (counts == np.floor(fac) + 1))
    assert abs(counts[:, 6].mean() - fac[6]) < 0.08                  # E[count] = r
    assert abs(counts[:, 7].mean() - fac[7]) < 0.08                  # f_2 = 0.3 -> 1.29


def _detectron2_rfs_stream(factors, seed, epochs):
    """detectron2 RepeatFactorTrainingSampler._infinite_indices, written out."""
    g = torch.Generator()
    g.manual_seed(seed)
    int_part = torch.trunc(factors)
    frac_part = factors - int_part
    out = []
    for _ in range(epochs):
        rands = torch.rand(len(frac_part), generator=g)
        reps = int_part + (rands < frac_part).float()
        indices = []
        for i, rep in enumerate(reps):
            indices.extend([i] * int(rep.item()))
        indices = torch.tensor(indices, dtype=torch.int64)
        out.extend(indices[torch.randperm(len(indices), generator=g)].tolist())
    return out


def test_rfs_stream_equals_detectron2():
    ds = long_tail(300)
    s = RepeatFactorSampler(ds, seed=5, repeat_thresh=0.05)
    ref = _detectron2_rfs_stream(s.factors, 5, 3)
    assert take(s, len(ref)) == ref


def test_random_stream_equals_detectron2():
    g = torch.Generator()
    g.manual_seed(11)
    ref = [i for _ in range(3) for i in torch.randperm(17, generator=g).tolist()]
    assert take(TrainingSampler(FakeDataset([[0]] * 17), seed=11), 51) == ref


def test_repeat_factors_helper_empty_dataset_labels():
    np.testing.assert_array_equal(repeat_factors([np.array([])] * 3, 0.001).numpy(), [1, 1, 1])


# ---------------------------------------------------------------------- class-aware
def test_class_aware_uniform_over_classes_then_images():
    # one class per image: 1 image of class 0, 5 of class 1, 200 of class 2, 3 of class 3
    labels = [[0]] + [[1]] * 5 + [[2]] * 200 + [[3]] * 3 + [[]] * 10
    ds = FakeDataset(labels)
    s = ClassAwareSampler(ds, seed=0)
    draws = np.array(take(s, 20000))
    cls = np.array([ds.labels[i][0] if len(ds.labels[i]) else -1 for i in draws])
    counts = np.bincount(cls, minlength=4)
    assert (cls >= 0).all()                                  # unlabelled images never drawn
    assert chisquare(counts).pvalue > 1e-3
    assert abs(counts[0] / 20000 - 0.25) < 0.02              # rarest class as often as the most frequent
    within = np.bincount(draws[cls == 1], minlength=6)[1:6]
    assert chisquare(within).pvalue > 1e-3


def test_class_aware_multilabel_images_and_no_labels():
    s = ClassAwareSampler(FakeDataset([[0, 1], [1], [0]]), seed=2)
    assert s.classes.tolist() == [0, 1]
    assert set(take(s, 100)) == {0, 1, 2}
    with pytest.raises(ValueError, match="no image"):
        ClassAwareSampler(FakeDataset([[], []]))


# ---------------------------------------------------------------------- all samplers
SAMPLERS = {
    "random": lambda ds, **kw: TrainingSampler(ds, **kw),
    "rfs": lambda ds, **kw: RepeatFactorSampler(ds, repeat_thresh=0.05, **kw),
    "class_aware": lambda ds, **kw: ClassAwareSampler(ds, **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_rank_sharding_disjoint_and_complete(name):
    ds = long_tail(120)
    full = take(SAMPLERS[name](ds, seed=4), 300)
    shards = [take(SAMPLERS[name](ds, seed=4, rank=r, world_size=3), 100) for r in range(3)]
    for r in range(3):
        assert shards[r] == full[r::3]                        # disjoint stream positions, none missing
    assert sorted(sum(shards, [])) == sorted(full)


def test_random_sharding_covers_each_image_once_per_epoch():
    ds = FakeDataset([[0]] * 12)
    shards = [take(TrainingSampler(ds, seed=9, rank=r, world_size=3), 4) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(12))


@pytest.mark.parametrize("name", SAMPLERS)
def test_resume_continues_identical_stream(name):
    ds = long_tail(90)
    a = SAMPLERS[name](ds, seed=7, rank=1, world_size=2)
    it = iter(a)
    head = [next(it) for _ in range(37)]
    state = a.state_dict()
    tail = [next(it) for _ in range(150)]                    # crosses epoch boundaries
    b = SAMPLERS[name](ds, seed=7, rank=1, world_size=2)
    b.load_state_dict(state)
    assert take(b, 150) == tail
    assert state == {"seed": 7, "global_position": 74}
    # a state saved on rank 1 resumes rank 0 at the same global position
    c = SAMPLERS[name](ds, seed=7, rank=0, world_size=2)
    c.load_state_dict(state)
    full = take(SAMPLERS[name](ds, seed=7), 400)
    assert take(c, 50) == full[74:174:2] and head == full[1:74:2]


@pytest.mark.parametrize("name", SAMPLERS)
def test_seeds_differ_and_repeat(name):
    ds = long_tail(60)
    assert take(SAMPLERS[name](ds, seed=1), 60) == take(SAMPLERS[name](ds, seed=1), 60)
    assert take(SAMPLERS[name](ds, seed=1), 60) != take(SAMPLERS[name](ds, seed=2), 60)


def test_bad_arguments():
    ds = long_tail(10)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        TrainingSampler(ds, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        TrainingSampler(FakeDataset([]))
    s = TrainingSampler(ds, seed=1)
    with pytest.raises(ValueError, match="seed 3"):
        s.load_state_dict({"seed": 3, "global_position": 0})
    with pytest.raises(ValueError, match="repeat_thresh"):
        RepeatFactorSampler(ds, repeat_thresh=-1)


@pytest.mark.parametrize("name", ["random", "rfs", "class_aware"])
def test_configs_instantiate(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    s = instantiate(cfg, dataset=long_tail(50), seed=0, rank=1, world_size=2)
    assert s.rank == 1 and s.world_size == 2
    assert all(0 <= i < 50 for i in take(s, 20))
