"""A custom env speaks for itself to the agents: its ``system_prompt`` is the system message the
model sees and its ``parse_action`` reads the model's replies (GuessNumber, the documented example)."""

from __future__ import annotations

import envs
from agents.backends import Completion, HFBackend, SamplingParams
from agents.renderers import Renderer
from agents.rollout import RolloutConfig, collect_groups
from agents.system_prompts import FAMILY_PROMPTS, GENERIC_PROMPT
from envs.examples.guess_number import GuessNumberEnv, register

ENV = "Examples/GuessNumber-v0"


def test_renderer_uses_the_envs_own_prompt_and_parser(tiny):
    _, tok = tiny
    register()
    env = envs.make(ENV)
    _, info = env.reset(seed=0)
    renderer = Renderer.for_env(tok, env, info)
    system = tok.decode(renderer.start("hello"))
    assert GuessNumberEnv.system_prompt in system
    assert FAMILY_PROMPTS["household"] not in system and GENERIC_PROMPT not in system
    assert renderer.parse("I think... Guess: 12, final.").action == "guess 12"
    bad = renderer.parse("no idea")
    assert not bad.valid and "no action" in bad.error
    # a built-in family keeps its own parser
    household = Renderer.for_env(tok, envs.make("DistillGym/Household-v0"))
    assert household.action_parser is None and household.parse("go to desk 1").action == "go to desk 1"


class _Scripted:
    """A backend that answers every prompt with a fixed reply (the parser under test is the env's)."""

    policy_version = 0

    def __init__(self, tok, reply: str) -> None:
        self.reply, self.ids = reply, tok.encode(reply, add_special_tokens=False)

    def generate(self, prompts, params):
        return [Completion(token_ids=list(self.ids), logprobs=[0.0] * len(self.ids), text=self.reply,
                           finish_reason="stop") for _ in prompts]


def test_rollout_sends_the_parsed_action_to_the_env(tiny):
    """A reply with chatter around the command (which the household parser would send whole, and
    the env would reject): the env's parser extracts ``guess 10`` and the env accepts it. The
    replies are scripted (a random tiny model does not write commands); the rest is real."""
    model, tok = tiny
    register()
    cfg = RolloutConfig(group_size=1, max_turns=2, max_context_tokens=1024,
                        sampling=SamplingParams(max_tokens=12, seed=0))
    factory = lambda env, info: Renderer.for_env(tok, env, info)  # noqa: E731
    (group,) = collect_groups(ENV, ["train-000000"], HFBackend(model, tok), factory, cfg, seed=0)
    assert group.episodes[0].turns  # the real sampler plays the env through the same renderer
    text = "Let me try. guess 10 please"
    scripted = _Scripted(tok, text)
    (group,) = collect_groups(ENV, ["train-000000"], scripted, factory, cfg, seed=0)
    turn = group.episodes[0].turns[0]
    assert turn.action == "guess 10" and turn.action_valid
    assert turn.observation in ("Too low.", "Too high.", "Correct!")


def test_tiny_lora_run_is_evaluable(tmp_path):
    """``model=tiny`` is the documented test model: a LoRA run's final/ evaluates like any other."""
    from trainers.config import parse_config
    from trainers.evaluate import EvalConfig, evaluate_checkpoint
    from trainers.loop import train
    from trainers.train_config import TrainConfig

    cfg = parse_config(TrainConfig, ["model=tiny", "steps=1", "tasks_per_step=1", "group_size=2",
                                    "max_turns=1", "max_new_tokens=4", "max_context_tokens=1024",
                                    "progress=false", "checkpoint_every=0", f"output_dir={tmp_path}",
                                    "run_name=tiny-lora", "method=grpo", "finetune=lora"])
    final = train(cfg).final_dir
    [report] = evaluate_checkpoint(EvalConfig(model=str(final), episodes=2, max_turns=1, max_new_tokens=4,
                                              output_dir=str(tmp_path), max_context_tokens=1024))
    assert len(report.episodes) == 2 and 0.0 <= report.success_rate <= 1.0
