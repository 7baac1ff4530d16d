"""Clinical envs: a compact, offline, procedurally generated medical agent gym.

Ids: ``DistillGym/Clinical-v0`` (all task kinds) and one per kind:
``DistillGym/ClinicalDiagnosis-v0``, ``ClinicalTriage-v0``, ``ClinicalScore-v0``,
``ClinicalTreatment-v0``. The knowledge table is synthetic, written by the project for research
on agents, and NOT medical advice (see ``docs/clinical.md``).
"""

from __future__ import annotations

from envs.clinical.cases import TASK_KINDS, Case, PatientRecord, generate_case, triage_level
from envs.clinical.env import ClinicalEnv
from envs.clinical.knowledge import KnowledgeTableError, load_knowledge
from envs.clinical.scores import SCORES

__all__ = [
    "ENV_IDS",
    "TASK_KINDS",
    "SCORES",
    "Case",
    "ClinicalEnv",
    "KnowledgeTableError",
    "PatientRecord",
    "generate_case",
    "load_knowledge",
    "register",
    "triage_level",
]

ENV_IDS: dict[str, tuple[str, ...]] = {
    "DistillGym/Clinical-v0": TASK_KINDS,
    "DistillGym/ClinicalDiagnosis-v0": ("diagnosis",),
    "DistillGym/ClinicalTriage-v0": ("triage",),
    "DistillGym/ClinicalScore-v0": ("score",),
    "DistillGym/ClinicalTreatment-v0": ("treatment",),
}


def register() -> None:
    """Register the clinical ids with the DistillGym registry (idempotent)."""
    from envs.registry import register_env

    for env_id, kinds in ENV_IDS.items():
        register_env(
            env_id,
            "envs.clinical.env:ClinicalEnv",
            max_episode_steps=ClinicalEnv.max_episode_steps,
            kwargs={"task_kinds": kinds},
        )


register()
