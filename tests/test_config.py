"""Config round trips, overrides and every bad-input case of trainers.config."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from trainers.config import ConfigError, dump_yaml, load_yaml, parse_config


@dataclass
class DemoConfig:
    name: str = "run"
    lr: float = 1e-5
    steps: int = 10
    finetune: str = field(default="lora", metadata={"choices": ("lora", "full")})
    bf16: bool = False
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    teacher: str | None = None
    env_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError("steps: must be >= 0")


def test_yaml_round_trip(tmp_path):
    cfg = DemoConfig(name="x", lr=3e-4, steps=7, finetune="full", bf16=True, targets=("a",),
                     teacher="t", env_kwargs={"difficulty": 2})
    path = tmp_path / "c.yaml"
    dump_yaml(cfg, path)
    assert load_yaml(DemoConfig, path) == cfg


def test_overrides_layer_defaults_yaml_cli(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.001\nsteps: 3\n")
    cfg = parse_config(DemoConfig, ["--config", str(path), "steps=5", "--finetune", "full",
                                    "--bf16", "--targets", "q,k,v", "env_kwargs={difficulty: 3}"])
    assert cfg.lr == 0.001 and cfg.steps == 5 and cfg.finetune == "full" and cfg.bf16 is True
    assert cfg.targets == ("q", "k", "v") and cfg.env_kwargs == {"difficulty": 3}
    assert parse_config(DemoConfig, ["teacher=none"]).teacher is None
    assert parse_config(DemoConfig, ["--lr=2e-5"]).lr == 2e-5


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["stepz=3"], "unknown config key 'stepz'"),
        (["steps=three"], "steps: expected an integer"),
        (["lr=fast"], "lr: expected a number"),
        (["finetune=half"], "finetune: 'half' is not allowed; choose one of ['lora', 'full']"),
        (["bf16=maybe"], "bf16: expected true/false"),
        (["steps=-1"], "steps: must be >= 0"),
        (["justaword"], "cannot read argument"),
        (["--lr"], "option --lr needs a value"),
    ],
)
def test_bad_values_name_the_field(argv, needle):
    with pytest.raises(ConfigError) as err:
        parse_config(DemoConfig, argv)
    assert needle in str(err.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(DemoConfig, tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(DemoConfig, broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(DemoConfig, scalar)
    typo = tmp_path / "typo.yaml"
    typo.write_text("lrr: 1\n")
    with pytest.raises(ConfigError, match="did you mean lr"):
        load_yaml(DemoConfig, typo)
