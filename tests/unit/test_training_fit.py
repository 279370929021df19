"""The step-model training loop (training/fit.py): how state moves between strands."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.config import ModelConfig, TrainConfig  # noqa: E402
from training.data import Split  # noqa: E402
from training.fit import Prepared, fit_step  # noqa: E402
from training.nets import StepNet  # noqa: E402


def _series(n: int, f: int = 2, seed: int = 0) -> Prepared:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    values = (np.sin(t / 7.0 + np.arange(f)) + 0.1 * rng.normal(size=(n, f))).astype(np.float32)
    values[rng.random((n, f)) < 0.05] = np.nan  # missing readings ride through the carried state too
    split = Split(int(n * 0.7), int(n * 0.85), n)
    mean = np.nanmean(values[: split.train_end], axis=0).astype(np.float32)
    std = np.nanstd(values[: split.train_end], axis=0).astype(np.float32)
    return Prepared(values, None, split, mean, std)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_carried_state_across_epochs_equals_a_rollout_from_the_first_strand(cell: str) -> None:
    # lr 0: the weights never move, so every carried state must be exactly the state a
    # single pass over the series reaches at that row, starting from zero at the strand
    # chain's first row and going back one more strand per epoch.
    d = _series(400)
    torch.manual_seed(0)
    net = StepNet(ModelConfig(cell=cell, hidden=8, horizon=3, dropout=0.0), 2, 0, d.mean.tolist(), d.std.tolist())
    epochs, strand = 3, 48
    cfg = TrainConfig(epochs=epochs, batch=2, chunk=12, strand=strand, lr=0.0, patience=epochs,
                      carry_state=True, progress=False)
    carried: dict[tuple[int, int], torch.Tensor] = {}
    fit_step(net, [d], cfg, carried)
    ends = sorted(e for _, e in carried)
    first = ends[0] - strand  # where the strand chain starts (a random offset, fixed across epochs)
    assert len(ends) >= 4 and np.all(np.diff(ends) == strand) and ends[-1] <= d.split.train_end
    net.eval()
    with torch.no_grad():
        for end in ends:
            start = max(first, end - epochs * strand)
            x = torch.from_numpy(d.values[start:end])[None]
            _, _, want = net.seq(x, None, net.initial_state(1))
            torch.testing.assert_close(carried[(0, end)][None], want, atol=1e-5, rtol=0)


def test_without_carry_state_no_state_is_kept() -> None:
    d = _series(300)
    net = StepNet(ModelConfig(cell="gru", hidden=8, horizon=3), 2, 0, d.mean.tolist(), d.std.tolist())
    carried: dict[tuple[int, int], torch.Tensor] = {}
    fit_step(net, [d], TrainConfig(epochs=1, batch=2, chunk=12, strand=48, progress=False), carried)
    assert carried == {}


class _Recording(StepNet):
    """A StepNet that keeps every input chunk it is given (to see what training feeds it)."""

    seen: list[torch.Tensor]

    def seq(self, x, tf, state, positions=None):  # type: ignore[no-untyped-def]
        self.seen.append(x.detach().clone())
        return super().seq(x, tf, state, positions)


def test_level_noise_shifts_a_whole_strand_inputs_and_targets_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    # An alternating 0 / 4 series: whatever the shift, a chunk's smallest value is the shift.
    n, amp = 300, 4.0
    values = np.zeros((n, 2), np.float32)
    values[1::2] = amp
    d = Prepared(values, None, Split(210, 255, n), np.full(2, amp / 2, np.float32), np.full(2, amp / 2, np.float32))
    net = _Recording(ModelConfig(cell="gru", hidden=8, horizon=3), 2, 0, d.mean.tolist(), d.std.tolist())
    net.seen = []
    targets_seen: list[torch.Tensor] = []
    import training.fit as fit

    real = fit._losses

    def losses(fc, sc, y, unit, w):  # type: ignore[no-untyped-def]
        targets_seen.append(y.detach().clone())
        return real(fc, sc, y, unit, w)

    monkeypatch.setattr(fit, "_losses", losses)
    chunk, strand = 12, 48
    fit_step(net, [d], TrainConfig(epochs=2, batch=2, chunk=chunk, strand=strand, level_noise=1.0, progress=False))
    per_strand = strand // chunk  # a burn-in chunk, then chunks with a loss
    assert len(net.seen) % per_strand == 0 and len(targets_seen) == len(net.seen) // per_strand * (per_strand - 1)
    shifts = []
    for k in range(0, len(net.seen), per_strand):
        group = net.seen[k : k + per_strand]
        shift = group[0].amin(dim=1, keepdim=True)  # (B, 1, F)
        for j, x in enumerate(group):
            torch.testing.assert_close(x.amin(dim=1, keepdim=True), shift)  # one shift for the whole strand
            assert set(np.unique(np.round((x - shift).numpy(), 4))) <= {0.0, amp}
            if j:  # the targets of that chunk moved by the same shift
                y = targets_seen[k // per_strand * (per_strand - 1) + j - 1]
                ok = ~torch.isnan(y)
                assert set(np.unique(np.round((y - shift[:, :, None, :])[ok].numpy(), 4))) <= {0.0, amp}
        shifts.append(shift.flatten())
    s = torch.cat(shifts)
    assert 0.5 < float(s.std()) / (amp / 2) < 1.6  # level_noise 1.0 in train stds (amp / 2 here)
