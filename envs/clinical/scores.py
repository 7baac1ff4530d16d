"""Clinical scores as plain, pure functions (synthetic simplifications; NOT medical advice).

Each function takes the score's inputs as typed keyword arguments and returns the score. They
follow the published point systems in simplified form (thresholds stated in each docstring), so a
newcomer can check every point by hand. :data:`SCORES` describes each score for the env's
``compute_score`` tool and its protocol text: inputs with types, tolerance of a submitted answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = [
    "TROPONIN_ULN_NG_L",
    "ScoreSpec",
    "SCORES",
    "curb65",
    "qsofa",
    "cha2ds2_vasc",
    "wells_pe",
    "heart_score",
    "centor_mcisaac",
    "alvarado",
    "ScoreInputError",
    "call_score",
]

TROPONIN_ULN_NG_L = 14.0  # upper limit of normal of the (synthetic) hs-troponin assay


class ScoreInputError(ValueError):
    """Inputs given to :func:`call_score` are missing, unknown or of the wrong type."""


def curb65(
    confusion: bool, urea_mmol_l: float, resp_rate: int, sbp: int, dbp: int, age: int
) -> int:
    """CURB-65 severity of community-acquired pneumonia, 0..5.

    score = [confusion] + [urea > 7 mmol/L] + [RR >= 30] + [SBP < 90 or DBP <= 60] + [age >= 65]
    """
    return (
        int(confusion)
        + int(urea_mmol_l > 7.0)
        + int(resp_rate >= 30)
        + int(sbp < 90 or dbp <= 60)
        + int(age >= 65)
    )


def qsofa(resp_rate: int, sbp: int, altered_mentation: bool) -> int:
    """quick SOFA for suspected infection, 0..3.

    score = [RR >= 22] + [SBP <= 100] + [altered mentation (GCS < 15)]
    """
    return int(resp_rate >= 22) + int(sbp <= 100) + int(altered_mentation)


def cha2ds2_vasc(
    chf: bool,
    hypertension: bool,
    age: int,
    diabetes: bool,
    stroke_tia: bool,
    vascular_disease: bool,
    female: bool,
) -> int:
    """CHA2DS2-VASc stroke risk in atrial fibrillation, 0..9.

    score = C[heart failure] + H[hypertension] + 2*A[age >= 75] + D[diabetes] + 2*S[stroke/TIA]
            + V[vascular disease] + A[65 <= age <= 74] + Sc[female]
    """
    age_points = 2 if age >= 75 else (1 if age >= 65 else 0)
    return (
        int(chf)
        + int(hypertension)
        + age_points
        + int(diabetes)
        + 2 * int(stroke_tia)
        + int(vascular_disease)
        + int(female)
    )


def wells_pe(
    dvt_signs: bool,
    pe_most_likely: bool,
    heart_rate: int,
    immobilization_or_surgery: bool,
    previous_dvt_pe: bool,
    hemoptysis: bool,
    malignancy: bool,
) -> float:
    """Wells score for pulmonary embolism, 0..12.5 in half points.

    score = 3[clinical signs of DVT] + 3[PE the most likely diagnosis] + 1.5[HR > 100]
            + 1.5[immobilisation >= 3 days or surgery in the last 4 weeks] + 1.5[previous DVT/PE]
            + 1[haemoptysis] + 1[malignancy]
    """
    return (
        3.0 * dvt_signs
        + 3.0 * pe_most_likely
        + 1.5 * (heart_rate > 100)
        + 1.5 * immobilization_or_surgery
        + 1.5 * previous_dvt_pe
        + 1.0 * hemoptysis
        + 1.0 * malignancy
    )


_HISTORY_POINTS = {"slightly": 0, "moderately": 1, "highly": 2}
_ECG_POINTS = {"normal": 0, "nonspecific": 1, "significant": 2}


def heart_score(
    history: str,
    ecg: str,
    age: int,
    risk_factors: int,
    atherosclerotic_disease: bool,
    troponin_ng_l: float,
) -> int:
    """HEART score for chest pain, 0..10.

    H: history "slightly" 0 / "moderately" 1 / "highly" suspicious 2;
    E: ECG "normal" 0 / "nonspecific" repolarisation changes 1 / "significant" ST deviation 2;
    A: age < 45 -> 0, 45..64 -> 1, >= 65 -> 2;
    R: risk factors (hypertension, high cholesterol, diabetes, obesity, smoking, family history)
       0 -> 0, 1..2 -> 1, >= 3 or known atherosclerotic disease -> 2;
    T: troponin <= ULN -> 0, <= 3 x ULN -> 1, > 3 x ULN -> 2 (ULN = 14 ng/L).
    """
    if history not in _HISTORY_POINTS or ecg not in _ECG_POINTS:
        raise ScoreInputError(
            f"history must be one of {sorted(_HISTORY_POINTS)} and ecg one of {sorted(_ECG_POINTS)}"
        )
    a = 0 if age < 45 else (1 if age < 65 else 2)
    r = 2 if (risk_factors >= 3 or atherosclerotic_disease) else (1 if risk_factors >= 1 else 0)
    ratio = troponin_ng_l / TROPONIN_ULN_NG_L
    t = 0 if ratio <= 1.0 else (1 if ratio <= 3.0 else 2)
    return _HISTORY_POINTS[history] + _ECG_POINTS[ecg] + a + r + t


def centor_mcisaac(
    age: int, tonsillar_exudate: bool, tender_anterior_nodes: bool, fever: bool, cough_absent: bool
) -> int:
    """Modified Centor (McIsaac) score for sore throat, -1..5.

    score = [tonsillar exudate or swelling] + [tender anterior cervical nodes] + [T > 38 C]
            + [cough absent] + (1 if 3 <= age <= 14; 0 if 15..44; -1 if age >= 45)
    """
    age_points = 1 if 3 <= age <= 14 else (0 if age <= 44 else -1)
    return (
        int(tonsillar_exudate)
        + int(tender_anterior_nodes)
        + int(fever)
        + int(cough_absent)
        + age_points
    )


def alvarado(
    migration: bool,
    anorexia: bool,
    nausea_vomiting: bool,
    rlq_tenderness: bool,
    rebound: bool,
    fever: bool,
    leukocytosis: bool,
    left_shift: bool,
) -> int:
    """Alvarado (MANTRELS) score for appendicitis, 0..10.

    score = M[pain migrating to the RIF] + A[anorexia] + N[nausea/vomiting] + 2 T[RIF tenderness]
            + R[rebound] + E[temperature >= 37.3 C] + 2 L[WBC > 10] + S[neutrophils > 75 %]
    """
    return (
        int(migration)
        + int(anorexia)
        + int(nausea_vomiting)
        + 2 * int(rlq_tenderness)
        + int(rebound)
        + int(fever)
        + 2 * int(leukocytosis)
        + int(left_shift)
    )


@dataclass(frozen=True)
class ScoreSpec:
    """A score as the env exposes it: display name, function, tolerance of answers."""

    name: str
    label: str
    fn: Callable[..., float]
    tolerance: float = 0.0

    @property
    def params(self) -> dict[str, type]:
        """Input name -> type, from the function's signature."""
        return _params(self.fn)

    def describe(self) -> str:
        args = ", ".join(f"{n} ({t.__name__})" for n, t in self.params.items())
        doc = " ".join(
            line.strip() for line in (self.fn.__doc__ or "").splitlines()[2:] if line.strip()
        )
        return f"{self.label} [{self.name}]: inputs {args}. {doc}"


@cache
def _params(fn: Callable[..., float]) -> dict[str, type]:
    hints = {"bool": bool, "int": int, "float": float, "str": str}
    return {n: hints[str(p.annotation)] for n, p in inspect.signature(fn).parameters.items()}


SCORES: dict[str, ScoreSpec] = {
    s.name: s
    for s in (
        ScoreSpec("curb65", "CURB-65", curb65),
        ScoreSpec("qsofa", "qSOFA", qsofa),
        ScoreSpec("cha2ds2_vasc", "CHA2DS2-VASc", cha2ds2_vasc),
        ScoreSpec("wells_pe", "Wells score for PE", wells_pe, tolerance=0.0),
        ScoreSpec("heart", "HEART score", heart_score),
        ScoreSpec("centor", "modified Centor (McIsaac) score", centor_mcisaac),
        ScoreSpec("alvarado", "Alvarado score", alvarado),
    )
}


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
    elif kind in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        return value.strip().lower()
    raise ScoreInputError(f"input {name!r} must be {kind.__name__}, got {value!r}")


def call_score(score: str, inputs: dict[str, Any]) -> float:
    """Evaluate ``SCORES[score]`` on ``inputs`` (lenient types: "yes"/1 for bools, "12" for ints)."""
    spec = SCORES[score]
    params = spec.params
    missing = [p for p in params if p not in inputs]
    unknown = [k for k in inputs if k not in params]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        raise ScoreInputError(f"{spec.label}: {'; '.join(parts)}; expected inputs {list(params)}")
    kwargs = {n: _coerce(n, inputs[n], params[n]) for n in params}
    return spec.fn(**kwargs)
