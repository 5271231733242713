"""Stage 3's schedule (lambda per step, the learning rate of every optimiser group per step): the official one,
step by step, on SST-2's full training set; scaled learning rates on less data (issue 26)."""
from __future__ import annotations

import pytest
import torch

from training.pipeline import (TrainConfig, apply_options, apply_setting, check_config,
                               resolve_run_length_defaults, slow_model_warning)
from training.stage3_adapler import (LR_REFERENCE_STEPS, MAX_LR_SCALE, OFFICIAL_SST2_STEPS, SHORT_RUN_TARGET_SPEEDUP,
                                     OFFICIAL_SST2_STEPS_PER_EPOCH, Stage3Config, make_optimizers)

from adapler_export.cli import build_parser
from adapler_export.errors import AdaplerError


class ThresholdedModel(torch.nn.Module):
    """The parameter names make_optimizers sorts by: a backbone, CPs ("cps."), eta and theta."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)
        self.cps = torch.nn.Linear(2, 1)
        self.eta = torch.nn.Parameter(torch.full((3,), 0.25))
        self.theta = torch.nn.Parameter(torch.ones(3))


def schedule(cfg: Stage3Config, steps_per_epoch: int) -> list:
    """(lambda, backbone lr, CP lr, eta lr) of every optimiser step, as run_stage3 steps them."""
    model = ThresholdedModel()
    optimizer, scheduler, threshold_optimizer, threshold_scheduler = make_optimizers(
        model, cfg, steps_per_epoch * cfg.epochs)
    groups = optimizer.param_groups
    backbone = next(g for g in groups if any(p is model.backbone.weight for p in g["params"]))
    cps = next(g for g in groups if any(p is model.cps.weight for p in g["params"]))
    rows = []
    for epoch in range(cfg.epochs):
        for step in range(steps_per_epoch):
            rows.append((cfg.step_lambda(epoch, step), backbone["lr"], cps["lr"],
                         threshold_optimizer.param_groups[0]["lr"]))
            optimizer.step()  # no gradients: nothing moves, the schedules advance as in training
            threshold_optimizer.step()
            scheduler.step()
            threshold_scheduler.step()
    return rows


def official_warmup_decay(step: int, total: int, warmup_ratio: float = 0.06) -> float:
    """The official multiplier of every learning rate: linear warm-up over 6 % of the run, then linear decay to 0."""
    warmup = int(total * warmup_ratio)
    return (step + 1) / warmup if step < warmup else (total - step) / (total - warmup)


def test_full_sst2_runs_the_official_schedule_step_by_step():
    """2,105 steps per epoch (67,349 sentences in batches of 32), 5 epochs: lambda = 10 * 10**epoch (1000 on the
    very first step), backbone and CPs at 3e-5 and eta at 5e-4, all with the official warm-up and decay."""
    cfg = Stage3Config()
    assert (cfg.epochs, cfg.batch_size, OFFICIAL_SST2_STEPS) == (5, 32, 5 * 2105)
    assert -(-67349 // cfg.batch_size) == OFFICIAL_SST2_STEPS_PER_EPOCH
    assert cfg.lr_scale(OFFICIAL_SST2_STEPS) == 1.0
    rows = schedule(cfg, OFFICIAL_SST2_STEPS_PER_EPOCH)
    assert len(rows) == OFFICIAL_SST2_STEPS
    for step, (lam, backbone_lr, cp_lr, eta_lr) in enumerate(rows):
        epoch = step // OFFICIAL_SST2_STEPS_PER_EPOCH
        factor = official_warmup_decay(step, OFFICIAL_SST2_STEPS)
        assert lam == (1000.0 if step == 0 else 10.0 * 10.0 ** epoch)
        assert backbone_lr == pytest.approx(3e-5 * factor, rel=1e-12, abs=1e-20)
        assert cp_lr == pytest.approx(3e-5 * factor, rel=1e-12, abs=1e-20)
        assert eta_lr == pytest.approx(5e-4 * factor, rel=1e-12, abs=1e-20)
    assert rows[631][3] == pytest.approx(5e-4) and rows[-1][3] < 1e-6, "warm-up to the peak, decay to 0"


@pytest.mark.parametrize("sentences", [3000, 10000])
def test_less_data_scales_the_cp_and_eta_rates_so_they_travel_as_far(sentences):
    """On a subset the epochs are shorter: lambda still follows the official per-epoch formula (the mask is
    hard by the run's end), the backbone keeps its rate, and the CP and eta rates are multiplied by
    4,700 / the run's steps, so that their summed learning rate (about how far Adam can move them) is that of
    a 4,700-step run at the official rates."""
    cfg = Stage3Config()
    assert LR_REFERENCE_STEPS == cfg.lr_reference_steps == 4700 < OFFICIAL_SST2_STEPS
    steps_per_epoch = -(-sentences // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scale = LR_REFERENCE_STEPS / total
    assert cfg.lr_scale(total) == pytest.approx(scale) and 2 < scale < MAX_LR_SCALE
    rows = schedule(cfg, steps_per_epoch)
    for step, (lam, backbone_lr, cp_lr, eta_lr) in enumerate(rows):
        epoch = step // steps_per_epoch
        factor = official_warmup_decay(step, total)
        assert lam == (1000.0 if step == 0 else 10.0 * 10.0 ** epoch)
        assert backbone_lr == pytest.approx(3e-5 * factor, rel=1e-12, abs=1e-20)
        assert cp_lr == pytest.approx(3e-5 * scale * factor, rel=1e-12, abs=1e-20)
        assert eta_lr == pytest.approx(5e-4 * scale * factor, rel=1e-12, abs=1e-20)
    reference = schedule(Stage3Config(lr_reference_steps=None), LR_REFERENCE_STEPS // cfg.epochs)
    for column in (2, 3):  # CPs, eta: as far as 4,700 official steps, within the rounding of the warm-up
        assert sum(r[column] for r in rows) == pytest.approx(sum(r[column] for r in reference), rel=0.03)
    # the backbone is not scaled: it travels as much less far as the run is shorter
    assert sum(r[1] for r in rows) == pytest.approx(sum(r[1] for r in reference) / scale, rel=0.03)


def test_scaling_stops_at_4700_steps_and_at_25x_and_can_be_switched_off():
    cfg = Stage3Config()
    assert MAX_LR_SCALE == 25.0
    assert cfg.lr_scale(5 * 32) == MAX_LR_SCALE, "1,000 sentences (160 steps) would be x29.4: capped"
    rows = schedule(cfg, 32)
    assert max(r[2] for r in rows) == pytest.approx(3e-5 * 25) and max(r[3] for r in rows) == pytest.approx(5e-4 * 25)
    assert max(r[1] for r in rows) == pytest.approx(3e-5), "the backbone is not scaled"
    assert cfg.lr_scale(LR_REFERENCE_STEPS) == cfg.lr_scale(2 * LR_REFERENCE_STEPS) == 1.0, "never slowed down"
    assert Stage3Config(lr_reference_steps=None).lr_scale(10) == 1.0
    rows = schedule(Stage3Config(lr_reference_steps=None), 94)
    assert max(r[3] for r in rows) == pytest.approx(5e-4), "off: the official rates on any data"
    fast = apply_setting(TrainConfig(), "fast")
    assert fast.stage3.lr_reference_steps is None, "the fast setting sets its own rates"
    assert "lr_reference_steps" not in fast.stage3.work_key(), "so its work directories are those of before"
    assert Stage3Config().work_key()["lr_reference_steps"] == LR_REFERENCE_STEPS


def test_lr_reference_steps_option():
    parser = build_parser()
    off = parser.parse_args(["train", "--lr-reference-steps", "off"])
    cfg = apply_options(TrainConfig(), {"lr_reference_steps": off.lr_reference_steps})
    assert cfg.stage3.lr_reference_steps is None
    given = parser.parse_args(["train", "--lr-reference-steps", "2000"])
    assert apply_options(TrainConfig(), {"lr_reference_steps": given.lr_reference_steps}).stage3.lr_reference_steps \
        == 2000
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--lr-reference-steps", "0"])


def test_a_slow_trained_model_ends_with_a_warning_that_names_the_numbers_and_a_better_command():
    cfg = TrainConfig()
    warning = slow_model_warning(1.04, [25.2, 24.0, 23.5], [0.25, 0.29, 0.31], cfg)
    assert warning.startswith("warning: the trained model is only 1.04x faster")
    assert "25.2, 24.0, 23.5" in warning and "0.25, 0.29, 0.31" in warning
    assert "--target-speedup 1.6 --force" in warning
    assert slow_model_warning(1.1, [20.0], [0.5], cfg) is None
    cfg.stage3.target_speedup = 1.6
    assert "--target-speedup 2 --force" in slow_model_warning(1.04, [25.2], [0.25], cfg), "a target: a higher one"


def resolved(examples: int, **options) -> TrainConfig:
    cfg = apply_options(TrainConfig(), options)
    resolve_run_length_defaults(cfg, examples)
    return cfg


def test_full_sst2_runs_the_official_recipe_and_small_data_the_short_run_one():
    """The whole training set (10,525 steps): stage 3 from the pre-trained backbone, no speed target, the work key
    of every run before the option existed. 3,000 sentences (470 steps): from the fine-tuned model, towards
    at least SHORT_RUN_TARGET_SPEEDUP; explicit options win, and --lr-reference-steps off is the official recipe."""
    full = resolved(67349)
    assert (full.stage3_init, full.stage3.target_speedup) == ("pretrained", None)
    assert "target_speedup" not in full.stage3.work_key() and full.stage3.lr_scale(OFFICIAL_SST2_STEPS) == 1.0
    assert resolve_run_length_defaults(apply_options(TrainConfig(), {}), 67349) is None, "nothing to say"
    small = resolved(3000)
    assert (small.stage3_init, small.stage3.target_speedup) == ("finetuned", 1.6)
    assert SHORT_RUN_TARGET_SPEEDUP == 1.6
    note = resolve_run_length_defaults(apply_options(TrainConfig(), {}), 3000)
    assert "470 optimiser steps" in note and "towards 1.6x" in note and "fine-tuned" in note and "1e-05" in note
    assert (small.stage3.lr, small.stage3.cp_lr, small.stage3.target_mode) == (1e-5, 3e-5, "set-point")
    assert (full.stage3.lr, full.stage3.cp_lr) == (3e-5, None), "the official rates"
    explicit = resolved(67349, stage3_init="finetuned")
    assert explicit.stage3.lr == 1e-5 and explicit.stage3.target_speedup is None
    assert resolve_run_length_defaults(apply_options(TrainConfig(), {"stage3_init": "finetuned"}), 67349) == \
        "stage 3 trains its backbone at 1e-05 (--lr-stage3)"
    chosen = resolved(3000, stage3_init="pretrained", target_speedup=2.0)
    assert (chosen.stage3_init, chosen.stage3.target_speedup) == ("pretrained", 2.0)
    assert resolved(3000, target_speedup="off").stage3.target_speedup is None
    official = resolved(3000, lr_reference_steps="off")
    assert (official.stage3_init, official.stage3.target_speedup, official.stage3.lr_scale(470)) == \
        ("pretrained", None, 1.0)
    fast = apply_setting(TrainConfig(), "fast")
    resolve_run_length_defaults(fast, 4000)
    assert (fast.stage3_init, fast.stage3.target_speedup) == ("finetuned", None), "fast keeps its own recipe"
    assert TrainConfig().stage3.target_speedup == Stage3Config().target_speedup == "auto"
    assert Stage3Config().with_run_length(470).target_speedup == 1.6
    assert Stage3Config().with_run_length(OFFICIAL_SST2_STEPS).target_speedup is None


def test_target_speedup_option():
    parser = build_parser()
    cfg = apply_options(TrainConfig(), {"target_speedup": parser.parse_args(["train", "--target-speedup", "2"]).target_speedup})
    assert cfg.stage3.target_speedup == 2.0
    off = parser.parse_args(["train", "--target-speedup", "off"]).target_speedup
    assert apply_options(TrainConfig(), {"target_speedup": off}).stage3.target_speedup is None
    with pytest.raises(AdaplerError, match="above 1"):
        check_config(apply_options(TrainConfig(), {"target_speedup": 1.0}))


def test_target_mode_option():
    parser = build_parser()
    mode = parser.parse_args(["train", "--target-mode", "set-point"]).target_mode
    cfg = apply_options(TrainConfig(), {"target_mode": mode})
    assert cfg.stage3.target_mode == "set-point" and cfg.stage3.work_key()["target_mode"] == "set-point"
    floor = apply_options(TrainConfig(), {"target_mode": "floor", "target_speedup": 1.6})
    assert "target_mode" not in floor.stage3.work_key(), "the floor (every earlier target run's) keeps old keys"
    assert "target_mode" not in apply_options(TrainConfig(), {"target_speedup": "off"}).stage3.work_key(), \
        "without a target the mode changes nothing"
    cfg.stage3.target_mode = "ceiling"
    with pytest.raises(AdaplerError, match="unknown target mode"):
        check_config(cfg)
