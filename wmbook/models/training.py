"""Supervised training of the MLP world model (:class:`~wmbook.models.dynamics.DynamicsModel`):
minibatches under a one-cycle learning rate, early stopping on a validation split, optional mixed
precision on CUDA, and an atomic checkpoint every epoch from which a run resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from wmbook.buffers import Transitions
from wmbook.checkpoint import load_state, save_state
from wmbook.device import autocast, grad_scaler, to_device
from wmbook.models.dynamics import LOSS_COMPONENTS, DynamicsModel, LossFn, batch_loss, check_transitions


@dataclass
class TrainConfig:
    """Supervised training of a :class:`DynamicsModel`.

    The learning rate follows a one-cycle schedule peaking at ``lr``; training stops early
    once the validation loss has not improved for ``patience`` epochs, and the best weights
    are restored.

    ``mixed_precision``: on CUDA, run each training step's forward pass and loss under
    :func:`~wmbook.device.autocast` (bfloat16 where the GPU has it natively, otherwise
    float16 with a gradient scaler). Weights, optimiser state, normalisation statistics, the
    losses and every validation pass stay float32. It changes nothing on the CPU or MPS.
    """

    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-5
    patience: int = 8
    grad_clip: float = 10.0
    seed: int = 0
    mixed_precision: bool = True


@dataclass
class TrainHistory:
    """Per-epoch mean losses (``total`` and each component) on both splits, and the outcome."""

    train: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("total", *LOSS_COMPONENTS)})
    val: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("total", *LOSS_COMPONENTS)})
    lr: list[float] = field(default_factory=list)
    initial_val: float = math.nan  # validation loss before the first update
    best_epoch: int = -1  # -1: no epoch beat the starting weights
    best_val: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.val["total"])


@torch.no_grad()
def _mean_losses(model: DynamicsModel, data: Transitions, batch_size: int = 8192,
                 loss_fn: LossFn = batch_loss) -> dict[str, float]:
    """Mean loss (``total`` and each component) over ``data`` (on the model's device).

    Always float32, never under autocast: this is the validation score that picks the best
    epoch, and one pass per epoch costs little next to training.
    """
    sums = dict.fromkeys(("total", *LOSS_COMPONENTS), 0.0)
    for start in range(0, len(data), batch_size):
        batch = data.index(slice(start, start + batch_size))
        total, parts = loss_fn(model, batch)
        for key, value in {"total": total, **parts}.items():
            sums[key] += value.item() * len(batch)
    return {key: value / len(data) for key, value in sums.items()}


def train_dynamics(
    model: DynamicsModel,
    train: Transitions,
    val: Transitions,
    config: TrainConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    fit_normalizers: bool = True,
    loss_fn: LossFn | None = None,
) -> TrainHistory:
    """Fit ``model`` to ``train`` by minibatch gradient descent, early-stopping on ``val``.

    ``train`` and ``val`` hold single transitions ``(N, ...)``, trained with the one-step
    loss, or windows ``(N, k, ...)`` from :meth:`~wmbook.buffers.ReplayBuffer.windows`,
    trained with :func:`multistep_loss`.

    With ``checkpoint_path``, the full training state (weights, optimiser, schedule, shuffling
    generator, gradient scaler, history) is written atomically after every epoch, and a later
    call with the same path resumes where the last completed epoch left off, giving the same
    result as an uninterrupted run.

    On ``device`` the data sets are copied once, through pinned memory on CUDA; see
    :class:`TrainConfig` for ``mixed_precision``.

    ``loss_fn(model, batch)``: what is minimised and scored on ``val`` (default
    :func:`batch_loss`); a chapter hands its own copy of the loss here.

    ``fit_normalizers``: set the model's statistics from ``train`` before the first update (a
    fresh model needs it). Pass ``False`` to keep the statistics the model has, e.g. a
    warm-started model whose statistics :meth:`DynamicsModel.update_normalizers` has moved.

    Returns the :class:`TrainHistory`; ``model`` ends with the weights that scored best on
    ``val``: those of the best epoch, or the starting weights if no epoch improved on them.
    For that choice to be fair to a warm-started model, ``val`` must hold no transition its
    earlier training saw (a split that stays fixed as the data grow).
    """
    config = config or TrainConfig()
    loss_fn = loss_fn or batch_loss
    check_transitions(train, model.config, "train")
    check_transitions(val, model.config, "val")
    device = torch.device(device)
    train, val = train.to(device), val.to(device)
    model.to(device)

    steps_per_epoch = max(1, len(train) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))  # one kernel per step
    scaler = grad_scaler(device, enabled=config.mixed_precision)  # active for float16 only
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr,
                                                   total_steps=config.epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(config.seed)
    history, best_state, waited, start_epoch = TrainHistory(), None, 0, 0

    # what a resumed run needs back: these objects' states, and the bookkeeping saved beside them
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule, "shuffle": shuffle, "scaler": scaler}
    checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
    if checkpoint_path and checkpoint_path.exists():
        state = load_state(checkpoint_path, "DynamicsTraining", objects, map_location=device)
        best_state, waited, start_epoch = state["best_state"], state["waited"], state["epoch"] + 1
        history = TrainHistory(**state["history"])
        if state["done"]:
            start_epoch = config.epochs  # already finished: only restore the best weights
    else:
        if fit_normalizers:
            model.fit_normalizers(train)
        # the starting weights compete too: a warm-started model may already be the best
        history.initial_val = history.best_val = _mean_losses(model, val, loss_fn=loss_fn)["total"]
        best_state = copy.deepcopy(model.state_dict())

    started = time.perf_counter() - history.seconds
    bar = tqdm(range(start_epoch, config.epochs), desc="train world model", disable=not progress,
               initial=start_epoch, total=config.epochs)
    for epoch in bar:
        model.train()
        sums = dict.fromkeys(("total", *LOSS_COMPONENTS), 0.0)
        order = to_device(torch.randperm(len(train), generator=shuffle), device)
        for step in range(steps_per_epoch):
            rows = order[step * config.batch_size:(step + 1) * config.batch_size]
            # Autocast is safe here: inputs and targets are standardised to O(1), the losses
            # themselves run in float32 under autocast, and gradients land in float32 weights.
            with autocast(device, enabled=config.mixed_precision):
                total, parts = loss_fn(model, train.index(rows))
            if not torch.isfinite(total):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}, step {step}: loss is "
                    f"{total.item()}; try a lower learning rate than {config.lr}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)  # skips the step if float16 gradients overflowed
            scaler.update()
            schedule.step()
            for key, value in {"total": total, **parts}.items():
                sums[key] += value.item()
        model.eval()
        val_losses = _mean_losses(model, val, loss_fn=loss_fn)
        for key in sums:
            history.train[key].append(sums[key] / steps_per_epoch)
            history.val[key].append(val_losses[key])
        history.lr.append(schedule.get_last_lr()[0])

        if val_losses["total"] < history.best_val:  # early stopping bookkeeping
            history.best_val, history.best_epoch, waited = val_losses["total"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
        last_epoch = epoch == config.epochs - 1
        history.stopped_early = waited >= config.patience and not last_epoch
        history.seconds = time.perf_counter() - started
        bar.set_postfix(train=f"{history.train['total'][-1]:.2e}",
                        val=f"{val_losses['total']:.2e}")
        finished = history.stopped_early or last_epoch
        if checkpoint_path:
            save_state(checkpoint_path, "DynamicsTraining", objects, best_state=best_state, waited=waited,
                       epoch=epoch, done=finished, history=dataclasses.asdict(history))
        if finished:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
