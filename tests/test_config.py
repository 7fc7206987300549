import json

import pytest

from headstart.config import AUTO_BUDGET, ConfigError, TrainConfig, budget_seconds


def test_defaults_resolve_by_mode():
    features = TrainConfig(data="d").resolved()
    finetune = TrainConfig(data="d", mode="finetune").resolved()
    assert (features.epochs, features.augment, features.views) == (30, "none", 1)
    assert (finetune.epochs, finetune.augment) == (8, "light")
    assert features.lr > finetune.lr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "linear"}, "mode must be one of"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"unfreeze": "most"}, "unfreeze must be"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"label_smoothing": 1.5}, "label_smoothing must be in"),
        ({"mode": "features", "gradual_unfreeze": 2}, "gradual_unfreeze needs --mode finetune"),
        ({"mode": "finetune", "unfreeze": "all", "views": 4}, "views (cached augmented copies) needs a frozen"),
        ({"epochs": 3, "warmup_epochs": 3}, "warmup_epochs (3) must be fewer than epochs (3)"),
        ({"mode": "finetune", "int8_features": True}, "int8_features quantizes the frozen backbone"),
    ],
)
def test_invalid_settings_get_one_line_messages(settings, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig(data="d", **settings)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_setting_is_rejected(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data": "d", "epoch": 3}))
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_json(path)


def test_round_trip():
    cfg = TrainConfig(data="d", mode="finetune", unfreeze="2", epochs=4).resolved()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_fsdp_is_refused_until_its_weights_can_be_saved():
    from headstart.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="fsdp is not supported yet"):
        TrainConfig(data="x", mode="finetune", accelerator="cuda", strategy="fsdp")


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("45", 45), (" 2M ", 120)])
def test_budget_reads_seconds_minutes_and_hours(text, seconds):
    assert budget_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1m", "ten minutes", "10x"])
def test_a_malformed_budget_is_one_line(text):
    with pytest.raises(ConfigError, match="budget must be a positive time"):
        TrainConfig(data="d", mode="auto", budget=text)


def test_budget_belongs_to_auto_mode_which_defaults_it_and_runs_in_one_process():
    with pytest.raises(ConfigError, match="use it with --mode auto"):
        TrainConfig(data="d", budget="1m")
    assert TrainConfig(data="d", mode="auto").resolved().budget == AUTO_BUDGET
    assert TrainConfig(data="d").resolved().budget is None
    with pytest.raises(ConfigError, match="one process"):
        TrainConfig(data="d", mode="auto", devices=2)
