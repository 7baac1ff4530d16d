"""DistillGym agents: renderers, action parsing, generation backends, rollouts, teacher scoring.

The layer between models and envs, token-in-token-out: the sampler's token ids are stored as they
are and every later stage (teacher scoring, the trainer's recomputation) uses those same ids.
Heavy dependencies (torch, vllm) are imported by the submodules that need them.
"""

from agents.backends import (
    Completion,
    GenerationBackend,
    HFBackend,
    SamplingParams,
    VLLMBackend,
    make_backend,
)
from agents.ema import EMATeacher
from agents.errors import AgentsError, BackendError, ScoringError, TemplateError, TokenDriftError
from agents.parsing import ParsedAction, parse_action
from agents.renderers import Renderer, strip_span
from agents.rollout import RolloutConfig, RolloutStats, collect_groups, student_view
from agents.scoring import score_turns, sequence_logprobs, vllm_prompt_logprobs
from agents.system_prompts import system_text
from agents.types import EndReason, Episode, EpisodeGroup, Turn

__all__ = [
    "AgentsError",
    "BackendError",
    "Completion",
    "EMATeacher",
    "EndReason",
    "Episode",
    "EpisodeGroup",
    "GenerationBackend",
    "HFBackend",
    "ParsedAction",
    "Renderer",
    "RolloutConfig",
    "RolloutStats",
    "SamplingParams",
    "ScoringError",
    "TemplateError",
    "TokenDriftError",
    "Turn",
    "VLLMBackend",
    "collect_groups",
    "make_backend",
    "parse_action",
    "score_turns",
    "sequence_logprobs",
    "strip_span",
    "student_view",
    "system_text",
    "vllm_prompt_logprobs",
]
