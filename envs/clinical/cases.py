"""Procedural clinical cases: a hidden patient record with noise and distractors, and its answer.

A :class:`Case` is a pure function of ``(rng, kind, split, difficulty)``. Its record holds every
fact the tools can reveal (vitals, exam findings, test results, history, allergies, medications)
so results are always consistent with the hidden condition, and the answer is computed from the
record with the same pure functions the protocol describes:

* ``diagnosis``: the hidden condition (accepted: its name or any synonym);
* ``triage``: :func:`triage_level` of the vitals, GCS and the condition's triage category;
* ``score``: the score of :mod:`envs.clinical.scores` on :func:`score_inputs` of the record;
* ``treatment``: the first drug of the condition's first-line list that passes :func:`drug_safety`.

Synthetic data for research on agents; NOT medical advice.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.clinical.knowledge import (
    EXAM_SYSTEMS,
    HISTORY_FLAGS,
    NORMAL_VITALS,
    VITAL_KEYS,
    Condition,
    KnowledgeBase,
    normalize,
)
from envs.clinical.scores import SCORES, call_score

__all__ = [
    "TASK_KINDS",
    "DIFFICULTIES",
    "DISTRACTOR_SYMPTOMS",
    "DISTRACTOR_EXAM",
    "PatientRecord",
    "Case",
    "generate_case",
    "triage_level",
    "drug_safety",
    "score_inputs",
    "match_condition",
    "match_conditions",
    "match_drugs",
    "parse_triage",
    "parse_number",
]

TASK_KINDS: tuple[str, ...] = ("diagnosis", "triage", "score", "treatment")
DIFFICULTIES: dict[str, int] = {"easy": 0, "medium": 1, "hard": 2}

# Findings unrelated to the case: noise that must not change any answer (checked by tests: they
# contain none of the phrases the scores look for).
DISTRACTOR_SYMPTOMS: tuple[str, ...] = (
    "mild lower back ache for years",
    "seasonal hay fever",
    "trouble sleeping lately",
    "stiff knees in the mornings",
    "dry itchy skin on the elbows",
    "ringing in the ears now and then",
    "a bunion on the right foot",
)
DISTRACTOR_EXAM: dict[str, str] = {
    "skin": "small healed scar on the left forearm",
    "musculoskeletal": "mild bilateral knee crepitus",
    "ent": "wax in both ear canals",
    "general": "wears reading glasses, otherwise unremarkable",
    "mental_state": "slightly irritable about the wait, otherwise euthymic",
}
_BASE_HISTORY_P: dict[str, float] = {
    "hypertension": 0.25,
    "diabetes": 0.12,
    "hypercholesterolemia": 0.2,
    "smoking": 0.2,
    "obesity": 0.15,
    "family_history_cad": 0.1,
    "heart_failure": 0.05,
    "prior_stroke_tia": 0.05,
    "vascular_disease": 0.06,
    "prior_dvt_pe": 0.04,
    "malignancy": 0.04,
    "recent_surgery": 0.05,
    "asthma": 0.08,
    "renal_impairment": 0.06,
    "peptic_ulcer": 0.05,
}
_HEART_RISK_FLAGS = (
    "hypertension",
    "hypercholesterolemia",
    "diabetes",
    "obesity",
    "smoking",
    "family_history_cad",
)


@dataclass(frozen=True)
class PatientRecord:
    """Everything true about the patient; the tools reveal it piece by piece."""

    condition: str
    age: int
    sex: str  # "F" | "M"
    pregnant: bool
    complaint: str
    symptoms: tuple[str, ...]  # condition symptoms present, then distractors
    vitals: dict[str, float]
    gcs: int
    exam: dict[str, str]  # abnormal systems only (findings joined by "; ")
    history: frozenset[str]
    allergies: tuple[str, ...]  # allergy groups
    medications: tuple[str, ...]
    labs: dict[str, float]
    heart_history: str  # "" unless the condition has a HEART history category


@dataclass(frozen=True)
class Case:
    """One task: what kind, the hidden record, what the agent is told, and the answer."""

    kind: str
    record: PatientRecord
    suspected: str | None  # condition id named in the referral (triage/score/treatment)
    score: str | None
    answer: Any  # condition id | triage int | score number | drug name
    answer_text: str
    safe_drugs: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- pure rules


def triage_level(vitals: dict[str, float], gcs: int, category: int) -> int:
    """Triage level 1 (resuscitation) .. 5 (non-urgent) = min(vitals level, condition category).

    vitals level 1 if SpO2 < 85 or SBP < 80 or RR < 10 or GCS <= 8; else 2 if HR > 130 or RR > 30
    or SpO2 < 92 or SBP < 90 or GCS < 15 or T >= 40.0; else 5 (no vital sign danger).
    """
    if vitals["spo2"] < 85 or vitals["sbp"] < 80 or vitals["rr"] < 10 or gcs <= 8:
        level = 1
    elif (
        vitals["hr"] > 130
        or vitals["rr"] > 30
        or vitals["spo2"] < 92
        or vitals["sbp"] < 90
        or gcs < 15
        or vitals["temp"] >= 40.0
    ):
        level = 2
    else:
        level = 5
    return min(level, category)


def drug_safety(
    kb: KnowledgeBase, record: PatientRecord, drug: str, condition: Condition | None
) -> tuple[list[str], list[str]]:
    """``(violations, cautions)`` of giving ``drug`` to the patient; no violation means safe.

    Violations: allergy to the drug's group or a cross-reactive one; a *major* interaction with a
    current medication; a patient contraindication (pregnancy, asthma, renal impairment...); a
    contraindication of the (known) condition. Moderate interactions are only cautions.
    """
    d = kb.drugs[drug]
    violations: list[str] = []
    cautions: list[str] = []
    for allergy in record.allergies:
        if d.allergy_group is not None and d.allergy_group in kb.unsafe_groups(allergy):
            violations.append(f"the patient is allergic to {allergy} ({d.allergy_group} group)")
    for med in record.medications:
        for it in kb.interactions_between(drug, med):
            text = f"{it.severity} interaction with {med}: {it.effect}"
            (violations if it.severity == "major" else cautions).append(text)
    flags = set(record.history) | ({"pregnancy"} if record.pregnant else set())
    for flag in d.contraindicated_in:
        if flag in flags:
            violations.append(f"contraindicated in {flag.replace('_', ' ')}")
    if condition is not None and drug in condition.contraindicated:
        violations.append(f"contraindicated in {condition.name}")
    return violations, cautions


def ecg_category(result: str) -> str:
    """HEART 'E' category of an ECG result text: significant | nonspecific | normal."""
    if "significant ST deviation" in result:
        return "significant"
    if "non-specific" in result:
        return "nonspecific"
    return "normal"


def score_inputs(
    kb: KnowledgeBase, case_record: PatientRecord, score: str, suspected: str | None
) -> dict[str, Any]:
    """The inputs of ``score`` as they follow from the record (what a careful agent would enter)."""
    r = case_record
    v = r.vitals
    h = r.history
    cond = kb.conditions[r.condition]
    symptoms = " | ".join(r.symptoms)
    if score == "curb65":
        return {
            "confusion": r.gcs < 15,
            "urea_mmol_l": r.labs["urea"],
            "resp_rate": int(v["rr"]),
            "sbp": int(v["sbp"]),
            "dbp": int(v["dbp"]),
            "age": r.age,
        }
    if score == "qsofa":
        return {"resp_rate": int(v["rr"]), "sbp": int(v["sbp"]), "altered_mentation": r.gcs < 15}
    if score == "cha2ds2_vasc":
        return {
            "chf": "heart_failure" in h,
            "hypertension": "hypertension" in h,
            "age": r.age,
            "diabetes": "diabetes" in h,
            "stroke_tia": "prior_stroke_tia" in h,
            "vascular_disease": "vascular_disease" in h,
            "female": r.sex == "F",
        }
    if score == "wells_pe":
        return {
            "dvt_signs": "unilateral calf swelling" in r.exam.get("musculoskeletal", ""),
            "pe_most_likely": suspected == "pulmonary_embolism",
            "heart_rate": int(v["hr"]),
            "immobilization_or_surgery": "recent_surgery" in h,
            "previous_dvt_pe": "prior_dvt_pe" in h,
            "hemoptysis": "coughing up blood" in symptoms,
            "malignancy": "malignancy" in h,
        }
    if score == "heart":
        return {
            "history": r.heart_history or "slightly",
            "ecg": ecg_category(kb.test_result_for(cond, "ecg")),
            "age": r.age,
            "risk_factors": sum(f in h for f in _HEART_RISK_FLAGS),
            "atherosclerotic_disease": "vascular_disease" in h or "prior_stroke_tia" in h,
            "troponin_ng_l": r.labs["troponin"],
        }
    if score == "centor":
        ent = r.exam.get("ent", "")
        return {
            "age": r.age,
            "tonsillar_exudate": "tonsillar exudate" in ent,
            "tender_anterior_nodes": "tender anterior cervical lymph nodes" in ent,
            "fever": v["temp"] > 38.0,
            "cough_absent": "cough" not in symptoms,
        }
    if score == "alvarado":
        abd = r.exam.get("abdominal", "")
        return {
            "migration": "pain migrating to the right iliac fossa" in symptoms,
            "anorexia": "loss of appetite" in symptoms,
            "nausea_vomiting": "nausea" in symptoms or "vomiting" in symptoms,
            "rlq_tenderness": "right iliac fossa tenderness" in abd,
            "rebound": "rebound tenderness" in abd,
            "fever": v["temp"] >= 37.3,
            "leukocytosis": r.labs["wbc"] > 10.0,
            "left_shift": r.labs["neutrophils"] > 75.0,
        }
    raise KeyError(score)


# --------------------------------------------------------------------------- answer parsing

_PREFIXES = re.compile(
    r"^(?:the )?(?:most likely |final |working )?(?:diagnosis|answer|dx)(?: is)?:?\s*"
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_TRIAGE = re.compile(r"(?<![\d.])([1-5])(?![\d.])")


def _find_phrases(text: str, index: dict[str, str]) -> list[str]:
    """Values of ``index`` whose keys occur as whole-word phrases in ``text`` (longest first)."""
    padded = f" {text} "
    found: list[str] = []
    for key in sorted(index, key=len, reverse=True):
        needle = f" {key} "
        if needle in padded:
            found.append(index[key])
            padded = padded.replace(needle, " # ")
    return found


def match_conditions(kb: KnowledgeBase, answer: str) -> list[str]:
    """Distinct condition ids named in ``answer`` (an exact name/synonym, else all phrases in it)."""
    text = _PREFIXES.sub("", normalize(answer))
    if text in kb.synonym_index:
        return [kb.synonym_index[text]]
    return list(dict.fromkeys(_find_phrases(text, kb.synonym_index)))


def match_condition(kb: KnowledgeBase, answer: str) -> str | None:
    """The condition named by ``answer`` when it names exactly one, else ``None``."""
    found = match_conditions(kb, answer)
    return found[0] if len(found) == 1 else None


def match_drugs(kb: KnowledgeBase, answer: str) -> list[str]:
    """Distinct drugs named in ``answer`` (by name or alias), in order of phrase length."""
    text = normalize(answer)
    if text in kb.drug_aliases:
        return [kb.drug_aliases[text]]
    return list(dict.fromkeys(_find_phrases(text, kb.drug_aliases)))


def parse_triage(answer: str) -> int | None:
    """The triage level in ``answer`` (``"level 2"`` -> 2); ``None`` if none or several."""
    levels = {int(m) for m in _TRIAGE.findall(answer)}
    return levels.pop() if len(levels) == 1 else None


_SCORE_LABELS = re.compile(
    "|".join(
        re.escape(x)
        for x in sorted(
            {*(s.label for s in SCORES.values()), *SCORES, "CURB65", "CHA2DS2"},
            key=len,
            reverse=True,
        )
    ),
    re.IGNORECASE,
)


def parse_number(answer: str) -> float | None:
    """The last number in ``answer`` after removing score names (``"CURB-65 = 3"`` -> 3.0)."""
    found = _NUMBER.findall(_SCORE_LABELS.sub(" ", answer))
    return float(found[-1]) if found else None


# --------------------------------------------------------------------------- generation


def _uniform(rng: random.Random, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * rng.random())


def _sample_vitals(rng: random.Random, cond: Condition) -> dict[str, float]:
    vitals = {}
    for key in VITAL_KEYS:
        lo, hi = cond.vitals.get(key, NORMAL_VITALS[key])
        value = _uniform(rng, lo, hi)
        vitals[key] = round(value, 1) if key == "temp" else float(round(value))
    return vitals


def _sample_exam(rng: random.Random, cond: Condition, difficulty: int) -> dict[str, str]:
    findings: dict[str, list[str]] = {s: list(f) for s, f in cond.exam.items()}
    for system, optional in cond.optional_exam.items():
        for finding in optional:
            if rng.random() < 0.5:
                findings.setdefault(system, []).append(finding)
    free = [s for s in DISTRACTOR_EXAM if s not in findings]
    for idx in rng.sample(range(len(free)), min(difficulty, len(free))):
        findings[free[idx]] = [DISTRACTOR_EXAM[free[idx]]]
    return {s: "; ".join(f) for s, f in findings.items()}


def _sample_history(rng: random.Random, cond: Condition) -> frozenset[str]:
    probs = {**_BASE_HISTORY_P, **cond.risk}
    return frozenset(flag for flag in HISTORY_FLAGS if rng.random() < probs[flag])


def _sample_record(
    kb: KnowledgeBase, rng: random.Random, cond: Condition, difficulty: int
) -> PatientRecord:
    age = int(rng.randrange(cond.age[0], cond.age[1] + 1))
    sex = cond.sex if cond.sex != "any" else ("F" if rng.random() < 0.5 else "M")
    keep_p = (0.85, 0.7, 0.55)[difficulty]
    symptoms = [cond.symptoms[0]] + [s for s in cond.symptoms[1:] if rng.random() < keep_p]
    distractors = [
        DISTRACTOR_SYMPTOMS[i]
        for i in rng.sample(
            range(len(DISTRACTOR_SYMPTOMS)), min(difficulty, len(DISTRACTOR_SYMPTOMS))
        )
    ]
    labs = {}
    for name, analyte in kb.analytes.items():
        lo, hi = cond.labs.get(name, analyte.normal)
        labs[name] = round(_uniform(rng, lo, hi), analyte.decimals)
    n_allergies = int(rng.random() < 0.25)
    groups = sorted(kb.allergy_groups)
    allergies = tuple(
        groups[i] for i in rng.sample(range(len(groups)), min(n_allergies, len(groups)))
    )
    n_meds = int(rng.randrange(0, 3))
    pool = kb.medication_pool
    meds = tuple(sorted(pool[i] for i in rng.sample(range(len(pool)), min(n_meds, len(pool)))))
    return PatientRecord(
        condition=cond.id,
        age=age,
        sex=sex,
        pregnant=cond.pregnant,
        complaint=cond.complaints[int(rng.randrange(len(cond.complaints)))],
        symptoms=tuple(symptoms + distractors),
        vitals=_sample_vitals(rng, cond),
        gcs=int(rng.randrange(cond.gcs[0], cond.gcs[1] + 1)),
        exam=_sample_exam(rng, cond, difficulty),
        history=_sample_history(rng, cond),
        allergies=allergies,
        medications=meds,
        labs=labs,
        heart_history=(
            cond.heart_history[int(rng.randrange(len(cond.heart_history)))]
            if cond.heart_history
            else ""
        ),
    )


def _hazards(kb: KnowledgeBase, record: PatientRecord, drug: str) -> list[dict[str, Any]]:
    """Record changes that would make ``drug`` unsafe (allergy, interacting drug, comorbidity)."""
    d = kb.drugs[drug]
    out: list[dict[str, Any]] = []
    if d.allergy_group is not None:
        out.append({"allergies": (d.allergy_group,)})
    for med in kb.medication_pool:
        if med != drug and any(it.severity == "major" for it in kb.interactions_between(drug, med)):
            out.append({"medications": tuple(sorted({*record.medications, med}))})
    for flag in d.contraindicated_in:
        if flag == "pregnancy":
            if record.sex == "F" and 18 <= record.age <= 45:
                out.append({"pregnant": True})
        else:
            out.append({"history": record.history | {flag}})
    return out


def _safe_drugs(kb: KnowledgeBase, record: PatientRecord, cond: Condition) -> tuple[str, ...]:
    return tuple(d for d in cond.treatment if not drug_safety(kb, record, d, cond)[0])


def _treatment_record(
    kb: KnowledgeBase, rng: random.Random, cond: Condition, record: PatientRecord
) -> PatientRecord:
    """Add a hazard to the preferred drug (most of the time) while keeping a safe option."""
    from dataclasses import replace

    if rng.random() < 0.7:
        target = (
            cond.treatment[0]
            if rng.random() < 0.75
            else cond.treatment[int(rng.randrange(len(cond.treatment)))]
        )
        options = _hazards(kb, record, target)
        if options:
            candidate = replace(record, **options[int(rng.randrange(len(options)))])
            if _safe_drugs(kb, candidate, cond):
                record = candidate
    if not _safe_drugs(kb, record, cond):  # the random background made every option unsafe
        record = replace(
            record, allergies=(), medications=(), history=frozenset(), pregnant=cond.pregnant
        )
    return record


_POOLS: dict[tuple[int, str, str], list[Condition]] = {}


def condition_pool(kb: KnowledgeBase, kind: str, split: str) -> list[Condition]:
    """Conditions a task of ``kind`` in ``split`` draws from (valid_unseen: held-out conditions)."""
    key = (id(kb), kind, split)
    if key not in _POOLS:
        _POOLS[key] = _condition_pool(kb, kind, split)
    return _POOLS[key]


def _condition_pool(kb: KnowledgeBase, kind: str, split: str) -> list[Condition]:
    heldout = split == "valid_unseen"
    pool = [c for c in kb.conditions.values() if c.heldout == heldout]
    if kind == "score":
        pool = [c for c in pool if c.scores]
    elif kind == "treatment":
        pool = [c for c in pool if len(c.treatment) >= 2]
    return pool


def generate_case(
    kb: KnowledgeBase, np_rng: np.random.Generator, kind: str, split: str, difficulty: int
) -> Case:
    """Draw one case of ``kind`` from ``np_rng`` (all randomness comes from it).

    One seed is drawn from ``np_rng`` for a :class:`random.Random`, whose scalar draws are ~20x
    cheaper than numpy's; the case stays a pure function of ``np_rng``'s state.
    """
    rng = random.Random(int(np_rng.integers(2**63)))
    pool = condition_pool(kb, kind, split)
    cond = pool[int(rng.randrange(len(pool)))]
    record = _sample_record(kb, rng, cond, difficulty)
    if kind == "diagnosis":
        return Case(kind, record, None, None, cond.id, cond.name)
    if kind == "triage":
        level = triage_level(record.vitals, record.gcs, cond.triage)
        return Case(kind, record, cond.id, None, level, str(level))
    if kind == "score":
        score = cond.scores[int(rng.randrange(len(cond.scores)))]
        value = call_score(score, score_inputs(kb, record, score, cond.id))
        text = f"{value:g}"
        return Case(kind, record, cond.id, score, float(value), text)
    if kind == "treatment":
        record = _treatment_record(kb, rng, cond, record)
        safe = _safe_drugs(kb, record, cond)
        return Case(kind, record, cond.id, None, safe[0], safe[0], safe_drugs=safe)
    raise ValueError(f"unknown task kind {kind!r}; expected one of {TASK_KINDS}")


def exam_text(record: PatientRecord, system: str) -> str:
    """What examining ``system`` shows (GCS always leads the neurological exam)."""
    text = record.exam.get(system, EXAM_SYSTEMS[system])
    if system == "obstetric" and record.sex == "M":
        text = "not applicable"
    if system == "neurological":
        mental = "confused and disorientated to time and place; " if record.gcs < 15 else ""
        text = f"GCS {record.gcs}/15; {mental}{text}"
    return text


__all__ += ["condition_pool", "ecg_category", "exam_text"]
