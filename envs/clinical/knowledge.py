"""The clinical knowledge table: conditions, tests, drugs, allergies and interactions.

The table lives in ``envs/clinical/data/*.json``. It was written by the DistillGym project for
research on LLM agents (no dataset was copied); it is synthetic, simplified on purpose, and NOT
medical advice. :func:`load_knowledge` reads and validates it once; every entry that breaks a rule
raises :class:`KnowledgeTableError` naming the entry, so a bad edit fails loudly at import.

Validated rules: every condition has symptoms, a first-line treatment made of known drugs, known
tests and exam systems, ranges with ``lo <= hi``, a triage category in 1..5, known score names,
globally unique synonyms, and -- the property the expert relies on -- any two conditions differ in
the result of at least one text test (so ordering decisive tests always identifies the condition).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from envs.base import EnvError

__all__ = [
    "DATA_DIR",
    "EXAM_SYSTEMS",
    "HISTORY_FLAGS",
    "VITAL_KEYS",
    "NORMAL_VITALS",
    "KnowledgeTableError",
    "Condition",
    "Drug",
    "Interaction",
    "Analyte",
    "KnowledgeBase",
    "load_knowledge",
    "normalize",
]

DATA_DIR = Path(__file__).parent / "data"

VITAL_KEYS: tuple[str, ...] = ("temp", "hr", "rr", "sbp", "dbp", "spo2")
NORMAL_VITALS: dict[str, tuple[float, float]] = {
    "temp": (36.4, 37.2),
    "hr": (62, 92),
    "rr": (12, 18),
    "sbp": (112, 138),
    "dbp": (66, 86),
    "spo2": (96, 99),
}
EXAM_SYSTEMS: dict[str, str] = {
    "general": "alert, well perfused, no distress",
    "respiratory": "vesicular breath sounds, no added sounds",
    "cardiovascular": "heart sounds I + II, no murmurs, no peripheral oedema",
    "abdominal": "soft, non-tender, bowel sounds present",
    "neurological": "orientated, cranial nerves intact, normal power, tone and reflexes",
    "ent": "throat not inflamed, no cervical lymphadenopathy",
    "skin": "warm, no rash",
    "musculoskeletal": "no joint swelling, calves soft and non-tender",
    "mental_state": "euthymic, normal speech, no suicidal ideation",
    "obstetric": "no pelvic or uterine tenderness",
}
# Flags of the past medical / social history; some feed scores, some contraindicate drugs.
HISTORY_FLAGS: dict[str, str] = {
    "hypertension": "high blood pressure",
    "diabetes": "diabetes",
    "hypercholesterolemia": "high cholesterol",
    "smoking": "current smoker",
    "obesity": "obesity",
    "family_history_cad": "father had a heart attack at 50",
    "heart_failure": "heart failure",
    "prior_stroke_tia": "previous stroke or TIA",
    "vascular_disease": "peripheral arterial disease / previous heart attack",
    "prior_dvt_pe": "previous DVT or pulmonary embolism",
    "malignancy": "active cancer under treatment",
    "recent_surgery": "surgery or bed rest within the last 4 weeks",
    "asthma": "asthma",
    "renal_impairment": "chronic kidney disease (eGFR 25)",
    "peptic_ulcer": "previous peptic ulcer",
}
PATIENT_CONTRA_FLAGS: frozenset[str] = frozenset(HISTORY_FLAGS) | {"pregnancy"}
SCORE_NAMES: frozenset[str] = frozenset(
    {"curb65", "qsofa", "cha2ds2_vasc", "wells_pe", "heart", "centor", "alvarado"}
)
_NON_DECISIVE_TESTS = frozenset({"pregnancy_test"})  # results follow the patient, not the condition
_WORD = re.compile(r"[a-z0-9%]+(?:['.-][a-z0-9]+)*")


class KnowledgeTableError(EnvError, ValueError):
    """The bundled knowledge table breaks a rule; the message names the entry."""


def normalize(text: str) -> str:
    """Lower-case, unify separators and collapse spaces: ``"Non-ST  elevation" -> "non st elevation"``."""
    return " ".join(_WORD.findall(text.lower().replace("-", " ").replace("_", " ")))


@dataclass(frozen=True)
class Condition:
    """One condition of the table (see ``data/conditions.json`` for the fields)."""

    id: str
    name: str
    domain: str
    synonyms: tuple[str, ...]
    complaints: tuple[str, ...]
    age: tuple[int, int]
    sex: str  # "any" | "F" | "M"
    pregnant: bool
    onset: str
    symptoms: tuple[str, ...]
    pain: str
    heart_history: tuple[str, ...]
    vitals: dict[str, tuple[float, float]]
    gcs: tuple[int, int]
    exam: dict[str, tuple[str, ...]]
    optional_exam: dict[str, tuple[str, ...]]
    tests: dict[str, str]
    labs: dict[str, tuple[float, float]]
    treatment: tuple[str, ...]
    contraindicated: tuple[str, ...]
    triage: int
    scores: tuple[str, ...]
    risk: dict[str, float]
    heldout: bool

    @property
    def all_names(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


@dataclass(frozen=True)
class Drug:
    name: str
    drug_class: str
    allergy_group: str | None
    contraindicated_in: tuple[str, ...]
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Interaction:
    a: str  # a drug name or a drug class
    b: str
    severity: str  # "major" (a safety violation) | "moderate" (a caution)
    effect: str


@dataclass(frozen=True)
class Analyte:
    name: str
    label: str
    unit: str
    normal: tuple[float, float]
    decimals: int


@dataclass
class KnowledgeBase:
    """The validated table plus lookup indexes (built once, read-only afterwards)."""

    conditions: dict[str, Condition]
    text_tests: dict[str, str]  # test -> normal result
    analytes: dict[str, Analyte]
    panels: dict[str, tuple[str, ...]]  # panel test -> analytes
    drugs: dict[str, Drug]
    allergy_groups: dict[str, dict[str, Any]]
    interactions: tuple[Interaction, ...]
    medication_pool: tuple[str, ...]
    test_aliases: dict[str, str] = field(default_factory=dict)  # normalized alias -> test
    drug_aliases: dict[str, str] = field(default_factory=dict)  # normalized alias -> drug
    synonym_index: dict[str, str] = field(default_factory=dict)  # normalized name -> condition id

    def resolve_test(self, name: str) -> str | None:
        return self.test_aliases.get(normalize(name))

    def resolve_drug(self, name: str) -> str | None:
        return self.drug_aliases.get(normalize(name))

    def test_result_for(self, cond: Condition, test: str) -> str:
        """Text result of ``test`` for a patient with ``cond`` (not for panels)."""
        return cond.tests.get(test, self.text_tests[test])

    def unsafe_groups(self, allergy: str) -> set[str]:
        """Allergy groups a patient allergic to ``allergy`` must avoid (itself + cross-reactive)."""
        return {allergy, *self.allergy_groups[allergy].get("cross_reactive", ())}

    def interactions_between(self, drug: str, other: str) -> list[Interaction]:
        """Interactions between two drugs, matched by name or by class, in either order."""
        keys_a = {drug, self.drugs[drug].drug_class}
        keys_b = {other, self.drugs[other].drug_class}
        return [
            it
            for it in self.interactions
            if (it.a in keys_a and it.b in keys_b) or (it.a in keys_b and it.b in keys_a)
        ]


# --------------------------------------------------------------------------- loading


def _pair(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and value[0] <= value[1]):
        raise KnowledgeTableError(
            f"{where}: expected a range [lo, hi] with lo <= hi, got {value!r}"
        )
    return float(value[0]), float(value[1])


def _parse_condition(raw: dict[str, Any], kb: KnowledgeBase) -> Condition:
    cid = raw.get("id", "<missing id>")
    where = f"condition {cid!r}"
    required = (
        "id",
        "name",
        "domain",
        "synonyms",
        "complaints",
        "age",
        "symptoms",
        "treatment",
        "triage",
    )
    for key in required:
        if not raw.get(key) and raw.get(key) != 0:
            raise KnowledgeTableError(f"{where}: missing or empty field {key!r}")
    vitals = {k: _pair(v, f"{where} vitals.{k}") for k, v in raw.get("vitals", {}).items()}
    bad = set(vitals) - set(VITAL_KEYS)
    if bad:
        raise KnowledgeTableError(f"{where}: unknown vital(s) {sorted(bad)}; known: {VITAL_KEYS}")
    exam = {s: tuple(f) for s, f in raw.get("exam", {}).items()}
    optional_exam = {s: tuple(f) for s, f in raw.get("optional_exam", {}).items()}
    for system in (*exam, *optional_exam):
        if system not in EXAM_SYSTEMS:
            raise KnowledgeTableError(f"{where}: unknown exam system {system!r}")
    tests = dict(raw.get("tests", {}))
    for test, result in tests.items():
        if test not in kb.text_tests or test in _NON_DECISIVE_TESTS:
            raise KnowledgeTableError(f"{where}: test {test!r} is not a decisive text test")
        if result == kb.text_tests[test]:
            raise KnowledgeTableError(f"{where}: result of {test!r} equals the normal result")
    labs = {a: _pair(r, f"{where} labs.{a}") for a, r in raw.get("labs", {}).items()}
    for analyte in labs:
        if analyte not in kb.analytes:
            raise KnowledgeTableError(f"{where}: unknown analyte {analyte!r}")
    for key in ("treatment", "contraindicated"):
        for drug in raw.get(key, []):
            if drug not in kb.drugs:
                raise KnowledgeTableError(f"{where}: {key} drug {drug!r} is not in drugs.json")
    for score in raw.get("scores", []):
        if score not in SCORE_NAMES:
            raise KnowledgeTableError(f"{where}: unknown score {score!r}")
    for flag in raw.get("risk", {}):
        if flag not in HISTORY_FLAGS:
            raise KnowledgeTableError(f"{where}: unknown risk flag {flag!r}")
    if not (isinstance(raw["triage"], int) and 1 <= raw["triage"] <= 5):
        raise KnowledgeTableError(f"{where}: triage must be an int in 1..5")
    if raw.get("sex", "any") not in ("any", "F", "M"):
        raise KnowledgeTableError(f"{where}: sex must be 'any', 'F' or 'M'")
    if set(raw["treatment"]) & set(raw.get("contraindicated", [])):
        raise KnowledgeTableError(f"{where}: a first-line drug is also contraindicated")
    age = _pair(raw["age"], f"{where} age")
    gcs = _pair(raw.get("gcs", [15, 15]), f"{where} gcs")
    return Condition(
        id=cid,
        name=raw["name"],
        domain=raw["domain"],
        synonyms=tuple(raw["synonyms"]),
        complaints=tuple(raw["complaints"]),
        age=(int(age[0]), int(age[1])),
        sex=raw.get("sex", "any"),
        pregnant=bool(raw.get("pregnant", False)),
        onset=raw.get("onset", "2 days"),
        symptoms=tuple(raw["symptoms"]),
        pain=raw.get("pain", ""),
        heart_history=tuple(raw.get("heart_history", ())),
        vitals=vitals,
        gcs=(int(gcs[0]), int(gcs[1])),
        exam=exam,
        optional_exam=optional_exam,
        tests=tests,
        labs=labs,
        treatment=tuple(raw["treatment"]),
        contraindicated=tuple(raw.get("contraindicated", ())),
        triage=raw["triage"],
        scores=tuple(raw.get("scores", ())),
        risk=dict(raw.get("risk", {})),
        heldout=bool(raw.get("heldout", False)),
    )


def _index(kb: KnowledgeBase) -> None:
    for test in kb.text_tests:
        kb.test_aliases[normalize(test)] = test
    for panel in kb.panels:
        kb.test_aliases[normalize(panel)] = panel
    for name, drug in kb.drugs.items():
        for alias in (name, *drug.aliases):
            kb.drug_aliases[normalize(alias)] = name
    for cond in kb.conditions.values():
        for alias in cond.all_names:
            key = normalize(alias)
            other = kb.synonym_index.get(key)
            if other is not None and other != cond.id:
                raise KnowledgeTableError(
                    f"condition {cond.id!r}: synonym {alias!r} is already used by {other!r}"
                )
            kb.synonym_index[key] = cond.id


def _check_distinguishable(kb: KnowledgeBase) -> None:
    conds = list(kb.conditions.values())
    for i, a in enumerate(conds):
        for b in conds[i + 1 :]:
            tests = set(a.tests) | set(b.tests)
            if all(kb.test_result_for(a, t) == kb.test_result_for(b, t) for t in tests):
                raise KnowledgeTableError(
                    f"conditions {a.id!r} and {b.id!r} give identical results on every test; "
                    "give one of them a decisive test"
                )


def _load_json(data_dir: Path, name: str) -> dict[str, Any]:
    path = data_dir / name
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise KnowledgeTableError(f"{path}: invalid JSON ({exc})") from exc


@lru_cache(maxsize=4)
def load_knowledge(data_dir: Path = DATA_DIR) -> KnowledgeBase:
    """Read, validate and index the table in ``data_dir`` (default: the bundled one; cached).

    Raises :class:`KnowledgeTableError` naming the first bad entry.
    """
    tests_raw, drugs_raw, conds_raw = (
        _load_json(data_dir, "tests.json"),
        _load_json(data_dir, "drugs.json"),
        _load_json(data_dir, "conditions.json"),
    )
    analytes = {
        n: Analyte(
            n, a["label"], a["unit"], _pair(a["normal"], f"analyte {n!r}"), int(a["decimals"])
        )
        for n, a in tests_raw["analytes"].items()
    }
    panels: dict[str, tuple[str, ...]] = {}
    for name, panel in tests_raw["panels"].items():
        for analyte in panel["analytes"]:
            if analyte not in analytes:
                raise KnowledgeTableError(f"panel {name!r}: unknown analyte {analyte!r}")
        panels[name] = tuple(panel["analytes"])
    drugs: dict[str, Drug] = {}
    groups = drugs_raw["allergy_groups"]
    for name, d in drugs_raw["drugs"].items():
        if d.get("allergy_group") is not None and d["allergy_group"] not in groups:
            raise KnowledgeTableError(
                f"drug {name!r}: unknown allergy group {d['allergy_group']!r}"
            )
        for flag in d.get("contraindicated_in", []):
            if flag not in PATIENT_CONTRA_FLAGS:
                raise KnowledgeTableError(f"drug {name!r}: unknown patient flag {flag!r}")
        drugs[name] = Drug(
            name,
            d["class"],
            d.get("allergy_group"),
            tuple(d.get("contraindicated_in", ())),
            tuple(d.get("aliases", ())),
        )
    known_keys = set(drugs) | {d.drug_class for d in drugs.values()}
    interactions = []
    for it in drugs_raw["interactions"]:
        for side in ("a", "b"):
            if it[side] not in known_keys:
                raise KnowledgeTableError(f"interaction {it!r}: {it[side]!r} is no drug or class")
        if it["severity"] not in ("major", "moderate"):
            raise KnowledgeTableError(f"interaction {it!r}: severity must be major or moderate")
        interactions.append(Interaction(it["a"], it["b"], it["severity"], it["effect"]))
    for med in drugs_raw["current_medication_pool"]:
        if med not in drugs:
            raise KnowledgeTableError(f"current_medication_pool: unknown drug {med!r}")
    kb = KnowledgeBase(
        conditions={},
        text_tests={t: v["normal"] for t, v in tests_raw["text_tests"].items()},
        analytes=analytes,
        panels=panels,
        drugs=drugs,
        allergy_groups=groups,
        interactions=tuple(interactions),
        medication_pool=tuple(drugs_raw["current_medication_pool"]),
    )
    for raw in conds_raw["conditions"]:
        cond = _parse_condition(raw, kb)
        if cond.id in kb.conditions:
            raise KnowledgeTableError(f"condition {cond.id!r} is defined twice")
        kb.conditions[cond.id] = cond
    _index(kb)
    for test, v in tests_raw["text_tests"].items():
        for alias in v.get("aliases", []):
            kb.test_aliases.setdefault(normalize(alias), test)
    for panel, v in tests_raw["panels"].items():
        for alias in v.get("aliases", []):
            kb.test_aliases.setdefault(normalize(alias), panel)
    _check_distinguishable(kb)
    return kb
