import torch
from torch.utils.data import TensorDataset

from domainbed.data.loaders import SeededTransform, StepBatchSampler, train_loader
from domainbed.data.splits import split_dataset


def test_split_is_seeded_disjoint_and_out_first():
    data = TensorDataset(torch.arange(10))
    out, in_ = split_dataset(data, 3, seed=5)
    assert len(out) == 3 and len(in_) == 7
    assert set(out.indices) | set(in_.indices) == set(range(10))
    assert split_dataset(data, 3, seed=5)[0].indices == out.indices
    assert split_dataset(data, 3, seed=6)[0].indices != out.indices


def test_batches_depend_only_on_seed_and_step():
    sampler = StepBatchSampler(n=10, batch_size=4, seed=1)
    stream = iter(sampler)
    batches = [next(stream) for _ in range(5)]
    resumed = iter(StepBatchSampler(n=10, batch_size=4, seed=1, start_step=3))
    assert next(resumed) == batches[3]
    # each epoch (10 examples = 2.5 batches) visits every example once
    first_epoch = [i for i, _ in batches[0] + batches[1]] + [i for i, _ in batches[2]][:2]
    assert sorted(first_epoch) == list(range(10))


def test_batch_larger_than_split_wraps_instead_of_hanging():
    sampler = StepBatchSampler(n=3, batch_size=8, seed=0)
    batch = sampler.batch(0)
    assert len(batch) == 8
    assert set(i for i, _ in batch) == {0, 1, 2}
    x, y = next(train_loader(TensorDataset(torch.arange(3.0), torch.arange(3)), None, 8, seed=0))
    assert x.shape == (8,)


def test_augmentation_is_reproducible_without_touching_global_rng():
    data = TensorDataset(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    noisy = SeededTransform(data, lambda x: x + torch.rand(2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, _ = noisy[(1, 123)]
    b, _ = noisy[(1, 123)]
    c, _ = noisy[(1, 124)]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(before, torch.get_rng_state())


def test_augmentation_seeds_never_touch_a_cuda_generator(monkeypatch):
    """On a GPU, reseeding CUDA from each example's augmentation seed would reseed dropout, drop-path and
    router noise at every step (and give every rank the same noise): only the CPU generator is seeded.
    torch.manual_seed reaches CUDA through torch.cuda.manual_seed_all, which is counted here on any machine."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    data = TensorDataset(torch.zeros(12, 2), torch.zeros(12, dtype=torch.long))
    batches = train_loader(data, lambda x: x + torch.rand(2), batch_size=4, seed=3)
    for _ in range(4):
        next(batches)
    assert seeded == []


def test_every_epoch_visits_every_example_exactly_once_in_a_new_order():
    """Our documented choice (DomainBed's InfiniteDataLoader samples with replacement): batches are
    consecutive slices of per-epoch permutations, epochs running across batch boundaries."""
    n, batch_size, epochs = 7, 3, 5
    sampler = StepBatchSampler(n=n, batch_size=batch_size, seed=4)
    stream = [i for step in range(n * epochs // batch_size + 1) for i, _ in sampler.batch(step)]
    orders = [stream[e * n:(e + 1) * n] for e in range(epochs)]
    for order in orders:
        assert sorted(order) == list(range(n))
    assert len({tuple(order) for order in orders}) > 1  # reshuffled each epoch


def test_evaluation_loaders_keep_their_workers_between_passes():
    """Every checkpoint evaluates: the same worker processes serve every pass (none restarted)."""
    import os

    from domainbed.data.loaders import eval_loader

    class WorkerPid(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.tensor(os.getpid()), 0

    loader = eval_loader(WorkerPid(), None, batch_size=2, num_workers=1)
    first = {int(pid) for x, _ in loader for pid in x}
    second = {int(pid) for x, _ in loader for pid in x}
    assert first == second and os.getpid() not in first
