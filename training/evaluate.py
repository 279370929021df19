"""``sensorcast evaluate``: accuracy next to naive baselines, with plots.

Writes ``report.json`` and ``report.md`` (MSE / MAE on validation and test beside
repeat-last and seasonal-naive, per horizon step), ``forecast.png`` (forecast vs
actual with the predicted band) and ``training.png`` (loss and validation curves).
``sensorcast train`` calls ``write_report`` itself; ``evaluate`` rebuilds a network from
its checkpoint (config included) and re-scores it, optionally on other data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import from_dict
from training.data import F32, load
from training.fit import History
from training.nets import SegRNN, StepNet
from training.trainer import Assessment, Trained, assess, build, prepare


def _one(net: StepNet | SegRNN, values: F32, tf: F32 | None, p: int) -> tuple[F32, F32]:
    """Forecast and scale (H, F) made at position p."""
    net.eval()
    with torch.no_grad():
        if isinstance(net, StepNet):
            x = torch.from_numpy(values[: p + 1])[None]
            t = torch.from_numpy(tf[: p + 1])[None] if tf is not None else None
            fc, sc, _ = net.seq(x, t, net.initial_state(1), positions=torch.tensor([p]))
            return fc[0, 0].numpy(), sc[0, 0].numpy()
        L = net.cfg.window
        fc2, sc2 = net(torch.from_numpy(values[p - L + 1 : p + 1])[None])
        return fc2[0].numpy(), sc2[0].numpy()


def plot_forecast(t: Trained, path: Path, feature: int = -1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = t.data[0]
    H = t.cfg.model.horizon
    p = max(d.split.val_end - 1, d.split.test_end - H - 1 - 2 * H)
    p = min(p, d.split.test_end - H - 1)
    fc, sc = _one(t.net, d.values, d.tf, p)
    f = feature % d.values.shape[1]
    back = min(3 * H, p + 1)
    xs_hist = np.arange(p - back + 1, p + 1)
    xs_fut = np.arange(p + 1, p + 1 + H)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(xs_hist, d.values[xs_hist, f], color="0.3", lw=1, label="history")
    ax.plot(xs_fut, d.values[xs_fut, f], color="k", lw=1, label="actual")
    ax.plot(xs_fut, fc[:, f], color="C0", lw=1.5, label="forecast")
    ax.fill_between(xs_fut, fc[:, f] - 1.96 * sc[:, f], fc[:, f] + 1.96 * sc[:, f], color="C0", alpha=0.2,
                    label="95% band")
    ax.set_title(f"{t.cfg.name}: {t.dataset.features[f]} ({t.cfg.model.cell}, test split)")
    ax.set_xlabel(f"step ({t.dataset.cadence_s:g} s)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_training(hist: History, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [e["epoch"] for e in hist.epochs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [e["train_loss"] for e in hist.epochs], label="train loss (MSE + NLL)")
    ax.plot(ep, [e["val_mse"] for e in hist.epochs], label="validation MSE (averaged weights)")
    if hist.best_epoch >= 0:
        ax.axvline(hist.best_epoch, color="0.5", ls=":", label=f"best epoch {hist.best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report_dict(t: Trained, a: dict[str, Assessment]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.cfg.name, "cell": t.cfg.model.cell, "horizon": t.cfg.model.horizon,
                           "features": list(t.dataset.features), "cadence_s": t.dataset.cadence_s,
                           "training": {"seconds": t.history.seconds, "best_epoch": t.history.best_epoch,
                                        "stopped": t.history.stopped, "epochs": t.history.epochs},
                           "config": t.cfg.to_dict(), "splits": {}}
    for split, s in a.items():
        row: dict[str, Any] = {"model": {"mse": s.model.mse, "mae": s.model.mae,
                                         "mse_by_step": s.model.mse_by_step, "mae_by_step": s.model.mae_by_step},
                               "repeat_last": {"mse": s.repeat_last.mse, "mae": s.repeat_last.mae,
                                               "mse_by_step": s.repeat_last.mse_by_step}}
        if s.seasonal_naive is not None:
            row["seasonal_naive"] = {"mse": s.seasonal_naive.mse, "mae": s.seasonal_naive.mae,
                                     "mse_by_step": s.seasonal_naive.mse_by_step}
        if s.fresh is not None:
            row["fresh_state"] = {"mse": s.fresh.mse, "mae": s.fresh.mae}
        out["splits"][split] = row
    return out


def report_markdown(rep: dict[str, Any]) -> str:
    lines = [f"# {rep['name']} ({rep['cell']}, horizon {rep['horizon']}, cadence {rep['cadence_s']:g} s)", "",
             "Errors in train-std units (z-scored with the train split's statistics).", "",
             "| split | model MSE | model MAE | repeat-last MSE | seasonal-naive MSE | fresh-state MSE |",
             "|---|---|---|---|---|---|"]
    for split, r in rep["splits"].items():
        sn = r.get("seasonal_naive", {}).get("mse")
        fr = r.get("fresh_state", {}).get("mse")
        lines.append(f"| {split} | {r['model']['mse']:.4f} | {r['model']['mae']:.4f} | {r['repeat_last']['mse']:.4f} | "
                     f"{'-' if sn is None else f'{sn:.4f}'} | {'-' if fr is None else f'{fr:.4f}'} |")
    test = rep["splits"].get("test")
    if test:
        lines += ["", "Test MSE per horizon step (model / repeat-last):", ""]
        H = len(test["model"]["mse_by_step"])
        for h in sorted({0, H // 4, H // 2, (3 * H) // 4, H - 1}):
            lines.append(f"- h={h + 1}: {test['model']['mse_by_step'][h]:.4f} / {test['repeat_last']['mse_by_step'][h]:.4f}")
    tr = rep["training"]
    lines += ["", f"Training: {tr['seconds']:.0f} s, best epoch {tr['best_epoch']}, {tr['stopped']}.", ""]
    return "\n".join(lines)


# Below this share of the best naive baseline's MSE a model is worth its forecasts.
NAIVE_MARGIN = 0.95


def naive_warning(a: dict[str, Assessment]) -> str | None:
    """A warning when the model does not beat repeat-last (or seasonal-naive) clearly.

    Such a model is still exported: its residuals still drive alerts. But its forecasts are
    no better than carrying the last value forward, which a user must hear about.
    """
    split = "test" if "test" in a else "val"
    s = a[split]
    naive = [("repeat-last", s.repeat_last.mse)]
    if s.seasonal_naive is not None:
        naive.append(("seasonal-naive", s.seasonal_naive.mse))
    name, best = min(naive, key=lambda kv: kv[1])
    if s.model.mse < NAIVE_MARGIN * best:
        return None
    return (f"WARNING: the model is no better than {name} on {split} (MSE {s.model.mse:.4g} vs {best:.4g}): "
            "its forecasts add little over the last reading. It is exported (its residuals still drive "
            "alerts), but try more history, a longer --minutes, --lags, or a smaller --horizon.")


def write_report(t: Trained, a: dict[str, Assessment], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    rep = report_dict(t, a)
    (out / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(rep))
    plot_forecast(t, out / "forecast.png")
    plot_training(t.history, out / "training.png", f"{t.cfg.name} ({t.cfg.model.cell})")
    return rep


def load_checkpoint(path: Path, source: str | None = None) -> Trained:
    """Rebuild the network from a checkpoint and reload (or redirect) its data."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    cfg = from_dict(blob["config"])
    if source:
        cfg = replace(cfg, data=replace(cfg.data, source=source))
    ds = load(cfg.data)
    data, _, _ = prepare(ds, cfg)
    mean = np.array(blob["mean"], dtype=np.float32)
    std = np.array(blob["std"], dtype=np.float32)
    net = build(cfg, len(blob["features"]), mean, std)
    net.load_state_dict(blob["state_dict"])
    setattr(net, "trained", True)  # noqa: B010
    net.eval()
    hist = History(epochs=list(blob.get("history", [])))
    if hist.epochs:
        best = min(hist.epochs, key=lambda e: e["val_mse"])
        hist.best_epoch, hist.best_val = int(best["epoch"]), float(best["val_mse"])
    return Trained(cfg, net, hist, data, mean, std, ds)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by `sensorcast train`")
    p.add_argument("--source", help="evaluate on this CSV / store URL instead of the training source")
    p.add_argument("--out", type=Path, help="report folder (default: beside the checkpoint)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads.")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    t = load_checkpoint(args.checkpoint, args.source)
    a = {"val": assess(t, "val")}
    if any(d.split.has_test for d in t.data):  # a --split-rows without a test part: validation only
        a["test"] = assess(t, "test")
    out = args.out or args.checkpoint.parent
    rep = write_report(t, a, out)
    print(report_markdown(rep))
    print(f"report and plots in {out}")
    return 0
