"""SMA and SWAD average exactly the iterates their papers say, in place."""

import pytest
import torch

from domainbed.algorithms import Checkpoint, RunInfo, Validation
from domainbed.algorithms.averaging import AveragedNetwork


def set_weights(network, value: float) -> None:
    """Every float parameter and buffer of ``network`` := value (iterate k has weights k)."""
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(value)


def weight_value(network) -> float:
    """The common value of every float weight (asserting they are all equal)."""
    values = torch.cat([t.flatten() for t in network.state_dict().values() if t.is_floating_point()])
    assert torch.allclose(values, values[0].expand_as(values)), "weights are not uniform"
    return values[0].item()


def test_averaged_network_is_a_running_mean_updated_in_place(kit):
    network = kit.algorithm("ERM").network
    averaged = AveragedNetwork(network)
    pointers = [t.data_ptr() for t in averaged.state_dict().values()]
    for k in (2.0, 4.0, 9.0):
        set_weights(network, k)
        averaged.update(network)
    assert weight_value(averaged.module) == pytest.approx(5.0)
    assert int(averaged.n_averaged) == 3
    assert [t.data_ptr() for t in averaged.state_dict().values()] == pointers  # no per-step copies
    averaged.train()
    assert not averaged.module.training  # an average only predicts


def test_sma_averages_every_iterate_from_its_start(kit):
    # sma_start_iter=3 counts updates from 1, as the authors' code: the average starts with the
    # iterate of update 2 (step 1) and takes every later one with equal weight.
    sma = kit.algorithm("SMA", sma_start_iter=3)
    for step in range(6):
        set_weights(sma.network, float(step))
        sma.after_step(step)
        expected = step if step < 2 else sum(range(1, step + 1)) / step
        assert weight_value(sma.network_sma.module) == pytest.approx(expected), step
    x = kit.minibatches()[0][0]
    torch.testing.assert_close(sma.predict(x), sma.network_sma.module(x))
    assert sma.evaluation_model().network is sma.network_sma.module


def run_swad(kit, losses, checkpoint_freq=1, **hparams):
    """Drive SWAD with iterate k = weights k and the given validation loss per checkpoint; return
    the algorithm and the weight value of each segment it validated."""
    swad = kit.algorithm("SWAD", **hparams)
    seen = []

    def validation(loss):
        return Validation(lambda model: (seen.append(weight_value(model)), loss)[1])

    steps = checkpoint_freq * len(losses)
    for step in range(steps):
        set_weights(swad.network, float(step))
        swad.after_step(step)
        if (step + 1) % checkpoint_freq == 0:
            k = step // checkpoint_freq
            swad.on_checkpoint(Checkpoint(step, step == steps - 1, validation(losses[k])))
    return swad, seen


def test_swad_segments_are_the_mean_of_the_iterates_between_checkpoints(kit):
    _, seen = run_swad(kit, [5.0, 4.0, 3.0], checkpoint_freq=2, n_converge=2, n_tolerance=2)
    assert seen == [0.5, 2.5, 4.5]


@pytest.mark.parametrize("losses, expected_mean, expected_start", [
    # converges at the segment of loss 2 (the next one is not lower): threshold 1.5 * mean(2, 2.5)
    # = 3.375; segments 3, 4, 5 stay in the valley; the valley ends once two in a row exceed it
    ([4, 3, 2, 2.5, 2.2, 2.4, 10, 10, 10, 10], (2 + 3 + 4 + 5) / 4, 2),
    # the run ends inside the valley: the waiting segments join until one exceeds the threshold
    ([4, 3, 2, 2.5, 2.2], (2 + 3 + 4) / 3, 2),
    # a single bump above the threshold inside the tolerance window does not end the valley
    ([4, 3, 2, 2.5, 5.0, 2.4, 2.3, 10, 10, 10], (2 + 3 + 4 + 5 + 6) / 5, 2),
])
def test_swad_averages_the_loss_valley(kit, losses, expected_mean, expected_start):
    swad, _ = run_swad(kit, losses, n_converge=2, n_tolerance=2, tolerance_ratio=0.5)
    assert int(swad.converged_step) == expected_start
    assert weight_value(swad.swad_network.module) == pytest.approx(expected_mean)
    assert swad.evaluation_model().network is swad.swad_network.module


def test_swad_without_a_valley_predicts_with_the_last_segment_and_says_so(kit, capsys):
    swad, _ = run_swad(kit, [5.0, 4.0, 3.0, 2.0], n_converge=3)
    assert not swad.converged
    assert weight_value(swad.evaluation_model().network) == pytest.approx(3.0)
    assert "warning: SWAD found no validation-loss valley" in capsys.readouterr().err
    swad, _ = run_swad(kit, [4, 3, 2, 2.5, 2.2], n_converge=2, n_tolerance=2)
    assert swad.converged and "warning" not in capsys.readouterr().err


def test_swad_records_whether_its_model_is_a_valley_average(kit):
    swad = kit.algorithm("SWAD", n_converge=2)
    values = [swad.on_checkpoint(Checkpoint(step, step == 2, Validation(lambda model, s=step: 5.0 - s)))
              for step in range(3)]
    assert "swad_valley_found" not in values[0] and values[-1]["swad_valley_found"] is False


def test_swad_resumes_mid_valley_exactly(kit):
    """The recent segments (weights and losses) are declared state: a resumed SWAD ends equal."""
    losses = [4, 3, 2, 2.5, 2.2, 2.4, 10, 10]
    reference, _ = run_swad(kit, losses, n_converge=2, n_tolerance=3, tolerance_ratio=0.5)
    resumed = kit.algorithm("SWAD", seed=7, n_converge=2, n_tolerance=3, tolerance_ratio=0.5)
    partial = kit.algorithm("SWAD", n_converge=2, n_tolerance=3, tolerance_ratio=0.5)
    for step in range(5):
        set_weights(partial.network, float(step))
        partial.after_step(step)
        partial.on_checkpoint(Checkpoint(step, False, Validation(lambda model, s=step: losses[s])))
    assert len(partial.recent) == 3  # segments waiting to join: the state that must survive
    resumed.load_state_dict(partial.state_dict())
    resumed.load_training_state(partial.training_state())
    for step in range(5, len(losses)):
        set_weights(resumed.network, float(step))
        resumed.after_step(step)
        resumed.on_checkpoint(Checkpoint(step, step == len(losses) - 1,
                                         Validation(lambda model, s=step: losses[s])))
    assert weight_value(resumed.swad_network.module) == weight_value(reference.swad_network.module)


@pytest.mark.parametrize("steps, freq, ok", [(30, 10, True), (12, 10, True), (11, 10, False), (10, 10, False)])
def test_swad_refuses_a_run_with_fewer_checkpoints_than_its_window(kit, steps, freq, ok):
    hparams = kit.hparams("SWAD")  # n_converge = 3; checkpoints at 0, 10, 20... and the last step
    run = RunInfo(steps=steps, checkpoint_freq=freq, num_train_domains=2)
    if ok:
        kit.algorithm("SWAD").check_run(hparams, run)
    else:
        with pytest.raises(ValueError, match="needs n_converge=3 checkpoints"):
            kit.algorithm("SWAD").check_run(hparams, run)
