"""DistillGym agents: renderers, action parsing, generation backends, rollouts, teacher scoring.

The layer between models and envs, token-in-token-out: the sampler's token ids are stored as they
are and every later stage (teacher scoring, the trainer's recomputation) uses those same ids.
Heavy dependencies (torch, vllm) are imported by the submodules that need them.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "AgentsError": "agents.errors",
    "BackendError": "agents.errors",
    "Completion": "agents.backends",
    "EMATeacher": "agents.ema",
    "EndReason": "agents.types",
    "Episode": "agents.types",
    "EpisodeGroup": "agents.types",
    "GenerationBackend": "agents.backends",
    "HFBackend": "agents.backends",
    "ParsedAction": "agents.parsing",
    "Renderer": "agents.renderers",
    "RolloutConfig": "agents.rollout",
    "RolloutStats": "agents.rollout",
    "SamplingParams": "agents.backends",
    "ServerBackend": "agents.server",
    "ServerFleet": "agents.server",
    "ScoringError": "agents.errors",
    "TemplateError": "agents.errors",
    "TokenDriftError": "agents.errors",
    "Turn": "agents.types",
    "VLLMBackend": "agents.backends",
    "collect_groups": "agents.rollout",
    "make_backend": "agents.backends",
    "parse_action": "agents.parsing",
    "score_turns": "agents.scoring",
    "sequence_logprobs": "agents.scoring",
    "strip_span": "agents.renderers",
    "student_view": "agents.rollout",
    "system_text": "agents.system_prompts",
    "vllm_prompt_logprobs": "agents.scoring",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use, so ``import agents.types`` (the store does) stays light."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


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
    "ServerBackend",
    "ServerFleet",
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
