"""ClinicalEnv: a procedurally generated medical agent gym (tools in, text out).

An episode is one emergency-department case. The agent calls tools (one JSON tool call per turn):
ask the patient, measure vitals, examine a system, order a test, check a drug, compute a score,
search the knowledge table, and finally ``submit_answer``. Four task kinds share the tools:
``diagnosis``, ``triage``, ``score`` and ``treatment`` (see :mod:`envs.clinical.cases`).

Reward (only on a valid submission, which ends the episode):
``total = correct`` for diagnosis / triage / score, and for treatment
``total = correct * (1 if safe else 0.1)`` -- a first-line drug that violates the patient's
safety (allergy, major interaction, contraindication) is capped at 0.1.
``reward_breakdown = {correct, safety, process, total}``; ``process`` is the fraction of the
expert's evidence-gathering calls the agent made before submitting (reported, not rewarded).

The expert (:meth:`ClinicalEnv.expert_action`) re-plans from any state: it gathers the evidence,
and for diagnoses orders the test that best splits the conditions still compatible with the
complaint and the results so far, until one is left. Synthetic data; NOT medical advice.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any, ClassVar

import numpy as np

from envs.base import InvalidOptionError, Privileged, StepOutcome, TextEnv, parse_task_id
from envs.clinical.cases import (
    DIFFICULTIES,
    TASK_KINDS,
    Case,
    drug_safety,
    exam_text,
    generate_case,
    match_condition,
    match_conditions,
    match_drugs,
    parse_number,
    parse_triage,
    score_inputs,
)
from envs.clinical.knowledge import (
    EXAM_SYSTEMS,
    HISTORY_FLAGS,
    Condition,
    KnowledgeBase,
    load_knowledge,
    normalize,
)
from envs.clinical.scores import SCORES, ScoreInputError, call_score
from envs.clinical.tools import ArgumentValidator, ToolCallError, build_schemas, parse_tool_call

__all__ = ["ClinicalEnv", "SAFETY_CAP", "QUESTIONS"]

SAFETY_CAP = 0.1
_PATIENT_TOOLS = frozenset({"ask_patient", "measure_vitals", "examine", "order_test", "check_drug"})
# Canonical questions per topic (the expert asks these; any wording with the keywords works).
QUESTIONS: dict[str, str] = {
    "symptoms": "What symptoms do you have?",
    "onset": "When did it start?",
    "pain": "Can you describe the pain?",
    "history": "Do you have any past medical history?",
    "medications": "What medications are you taking?",
    "allergies": "Do you have any allergies?",
    "pregnancy": "Could you be pregnant?",
}
_TOPIC_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("allergies", ("allerg",)),
    ("medications", ("medication", "medicine", "tablet", "pill", "taking", "prescri", "drugs")),
    ("pregnancy", ("pregnan", "period", "menstru")),
    (
        "history",
        (
            "history",
            "past",
            "condition",
            "illness",
            "smok",
            "diabetes",
            "blood pressure",
            "cholesterol",
            "surgery",
            "operation",
            "cancer",
            "family",
            "risk",
            "kidney",
            "stroke",
            "clot",
            "heart failure",
            "asthma",
            "ulcer",
        ),
    ),
    ("onset", ("when", "start", "how long", "onset", "began", "duration", "since")),
    ("pain", ("pain", "hurt", "describe", "radiat", "ache")),
)
_SCORE_SOURCES: dict[str, tuple[str, ...]] = {
    "curb65": ("vitals", "exam:neurological", "test:urea_electrolytes"),
    "qsofa": ("vitals", "exam:neurological"),
    "cha2ds2_vasc": ("ask:history",),
    "wells_pe": ("vitals", "ask:history", "ask:symptoms", "exam:musculoskeletal"),
    "heart": ("ask:pain", "ask:history", "test:ecg", "test:troponin"),
    "centor": ("vitals", "ask:symptoms", "exam:ent"),
    "alvarado": ("vitals", "ask:symptoms", "exam:abdominal", "test:full_blood_count"),
}


def _call(name: str, **arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def _key_action(key: str) -> str:
    """The expert's tool call that produces evidence ``key``."""
    kind, _, value = key.partition(":")
    if kind == "vitals":
        return _call("measure_vitals")
    if kind == "exam":
        return _call("examine", system=value)
    if kind == "test":
        return _call("order_test", test=value)
    if kind == "ask":
        return _call("ask_patient", question=QUESTIONS[value])
    if kind == "drug":
        return _call("check_drug", drug=value)
    if kind == "search":
        return _call("search_knowledge", query=value)
    raise KeyError(key)


def classify_question(question: str) -> str:
    """Topic of a question to the patient (``symptoms`` when nothing more specific matches)."""
    q = question.lower()
    for topic, words in _TOPIC_KEYWORDS:
        if any(w in q for w in words):
            return topic
    return "symptoms"


class ClinicalEnv(TextEnv):
    """Clinical cases with tools; ``task_kinds`` restricts the kinds (one per registered id)."""

    family: ClassVar[str] = "clinical"
    invalid_feedback: ClassVar[str] = "Error: invalid action (not a string or too long)."
    default_difficulty: ClassVar[int | str | None] = 1
    max_episode_steps: ClassVar[int] = 30

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        expose_privileged: bool = False,
        difficulty: int | str | None = None,
        task_kinds: Sequence[str] = TASK_KINDS,
    ) -> None:
        super().__init__(render_mode, expose_privileged=expose_privileged, difficulty=difficulty)
        kinds = tuple(task_kinds)
        if not kinds or any(k not in TASK_KINDS for k in kinds):
            raise InvalidOptionError(
                f"task_kinds must be a non-empty subset of {TASK_KINDS}, got {kinds}"
            )
        self.task_kinds = kinds
        self.kb: KnowledgeBase = load_knowledge()
        self.case: Case | None = None
        self._validate_difficulty(self.difficulty)
        _schemas()  # build the tool schemas now (imports transformers once) rather than in reset()

    # ------------------------------------------------------------------ TextEnv hooks

    def _task_salt(self) -> tuple[object, ...]:
        return self.task_kinds

    def _validate_difficulty(self, difficulty: Any) -> int:
        if isinstance(difficulty, str) and difficulty in DIFFICULTIES:
            return DIFFICULTIES[difficulty]
        if isinstance(difficulty, (int, np.integer)) and 0 <= int(difficulty) <= 2:
            return int(difficulty)
        raise InvalidOptionError(
            f"difficulty must be 0..2 or one of {list(DIFFICULTIES)}, got {difficulty!r}"
        )

    @property
    def task_type(self) -> str:
        return self.case.kind if self.case is not None else ""

    def tool_schemas(self) -> list[dict[str, Any]]:
        return list(_schemas())

    def _setup(self, task_id: str, rng: np.random.Generator, difficulty: Any) -> str:
        split, _ = parse_task_id(task_id)
        kind = self.task_kinds[int(rng.integers(len(self.task_kinds)))]
        self.case = generate_case(self.kb, rng, kind, split, difficulty)
        self._done: set[str] = set()
        self._submitted: str | None = None
        self._breakdown: dict[str, float] = {}
        self._required_cache: tuple[int, list[str]] = (-1, [])
        return self._intro()

    def _act(self, action: str) -> StepOutcome:
        try:
            name, args = parse_tool_call(action)
            _validator().check(name, args)
            if name == "submit_answer":
                return self._submit(str(args["answer"]))
            return StepOutcome(getattr(self, name)(**args))
        except ToolCallError as exc:
            return StepOutcome(f"Error: {exc}", valid=False)

    # ------------------------------------------------------------------ tools (schemas come from these)

    def ask_patient(self, question: str) -> str:
        """Ask the patient (or a relative) one question, e.g. about symptoms, onset, pain, past medical history, medications, allergies or pregnancy.

        Args:
            question: The question, in plain words.
        """
        topic = classify_question(question)
        self._done.add(f"ask:{topic}")
        return _answer_question(self.kb, self._case, topic)

    def measure_vitals(self) -> str:
        """Measure temperature, heart rate, respiratory rate, blood pressure and oxygen saturation."""
        self._done.add("vitals")
        v = self._case.record.vitals
        return (
            f"Vitals: T {v['temp']:.1f} C, HR {v['hr']:.0f}/min, RR {v['rr']:.0f}/min, "
            f"BP {v['sbp']:.0f}/{v['dbp']:.0f} mmHg, SpO2 {v['spo2']:.0f}% on air."
        )

    def examine(self, system: str) -> str:
        """Examine one body system.

        Args:
            system: The system to examine (choices: ["general", "respiratory", "cardiovascular", "abdominal", "neurological", "ent", "skin", "musculoskeletal", "mental_state", "obstetric"])
        """
        self._done.add(f"exam:{system}")
        return f"{system.replace('_', ' ').capitalize()} examination: {exam_text(self._case.record, system)}."

    def order_test(self, test: str) -> str:
        """Order a laboratory, imaging or bedside test; the result comes back at once.

        Args:
            test: Test name, e.g. "chest_xray", "ecg", "full_blood_count", "urea_electrolytes", "troponin", "urinalysis", "ct_head" (search_knowledge with query "tests" lists all).
        """
        name = self.kb.resolve_test(test)
        if name is None:
            raise ToolCallError(
                f"unknown test {test!r}; available tests: {', '.join(_test_names(self.kb))}"
            )
        self._done.add(f"test:{name}")
        return f"{name}: {_test_result(self.kb, self._case, name)}."

    def check_drug(self, drug: str) -> str:
        """Check one drug against this patient's allergies, current medications and contraindications.

        Args:
            drug: Drug name, e.g. "amoxicillin".
        """
        name = self.kb.resolve_drug(drug)
        if name is None:
            raise ToolCallError(f"unknown drug {drug!r}; use search_knowledge to find drug names")
        self._done.add(f"drug:{name}")
        cond = self.kb.conditions[self._case.suspected] if self._case.suspected else None
        violations, cautions = drug_safety(self.kb, self._case.record, name, cond)
        head = f"{name} ({self.kb.drugs[name].drug_class}): "
        text = (
            ("NOT SAFE - " + "; ".join(violations))
            if violations
            else "no allergy, major interaction or contraindication found"
        )
        if cautions:
            text += "; caution: " + "; ".join(cautions)
        return head + text + "."

    def compute_score(self, score: str, inputs: dict) -> str:
        """Compute a clinical score from its inputs (search_knowledge with the score name lists them).

        Args:
            score: The score (choices: ["curb65", "qsofa", "cha2ds2_vasc", "wells_pe", "heart", "centor", "alvarado"])
            inputs: Input names mapped to values, e.g. {"resp_rate": 24, "sbp": 95, "altered_mentation": false}.
        """
        try:
            value = call_score(score, inputs)
        except ScoreInputError as exc:
            raise ToolCallError(str(exc)) from None
        self._done.add(f"score:{score}")
        return f"{SCORES[score].label} = {value:g}"

    def search_knowledge(self, query: str) -> str:
        """Search the clinical knowledge table for a condition, drug, score, test or symptom.

        Args:
            query: What to look up, e.g. "pneumonia", "amoxicillin", "curb65", "tests" or "chest pain".
        """
        found = _search(self.kb, query)
        for cid in found[1]:
            self._done.add(f"search:{self.kb.conditions[cid].name}")
        return found[0]

    def submit_answer(self, answer: str) -> str:
        """Submit the final answer and end the case: a diagnosis, a triage level (1-5), a score value or one drug name.

        Args:
            answer: The answer.
        """
        return self._submit(answer).observation  # direct calls; step() goes through _act

    # ------------------------------------------------------------------ submission and reward

    @property
    def _case(self) -> Case:
        if self.case is None:
            raise InvalidOptionError("call reset() first")
        return self.case

    def _suspected_cond(self) -> Condition:
        """The condition named in the referral (triage, score and treatment cases)."""
        if self._case.suspected is None:
            raise InvalidOptionError(f"a {self._case.kind} case names no condition")
        return self.kb.conditions[self._case.suspected]

    def _score_name(self) -> str:
        if self._case.score is None:
            raise InvalidOptionError(f"a {self._case.kind} case has no score")
        return self._case.score

    def _submit(self, answer: str) -> StepOutcome:
        case = self._case
        if not answer.strip():
            raise ToolCallError("the answer is empty")
        if not any(
            k.split(":")[0] in ("ask", "vitals", "exam", "test", "drug") for k in self._done
        ):
            raise ToolCallError(
                "no evidence gathered yet: use ask_patient, measure_vitals, examine or order_test before submitting"
            )
        correct, safe, note = self._grade(case, answer)
        process = self._process()
        total = correct * (1.0 if safe else SAFETY_CAP)
        self._submitted = answer
        self._breakdown = {
            "correct": float(correct),
            "safety": float(safe),
            "process": process,
            "total": total,
        }
        verdict = "correct" if total == 1.0 else ("unsafe" if not safe else "incorrect")
        obs = f"Answer recorded: {answer.strip()}. The case is closed ({verdict}).{note}"
        return StepOutcome(
            obs, reward=total, terminated=True, won=total == 1.0, reward_breakdown=self._breakdown
        )

    def _grade(self, case: Case, answer: str) -> tuple[float, bool, str]:
        """``(correct, safe, note)``; raises :class:`ToolCallError` for unreadable answers."""
        if case.kind == "diagnosis":
            found = match_conditions(self.kb, answer)
            if len(found) != 1:
                raise ToolCallError(
                    "the answer names no known condition; submit one diagnosis such as 'pneumonia'"
                    if not found
                    else f"submit exactly one diagnosis (the answer names {len(found)} conditions)"
                )
            return float(found[0] == case.answer), True, ""
        if case.kind == "triage":
            level = parse_triage(answer)
            if level is None:
                raise ToolCallError("submit one triage level as a number from 1 to 5")
            return float(level == case.answer), True, ""
        if case.kind == "score":
            value = parse_number(answer)
            if value is None:
                raise ToolCallError("submit the score as a number")
            tol = SCORES[self._score_name()].tolerance
            return float(abs(value - case.answer) <= tol + 1e-9), True, ""
        drugs = match_drugs(self.kb, answer)
        if len(drugs) != 1:
            raise ToolCallError(
                "submit exactly one known drug name" + (f" (found {drugs})" if drugs else "")
            )
        cond = self._suspected_cond()
        violations, _ = drug_safety(self.kb, case.record, drugs[0], cond)
        note = f" Safety violation: {'; '.join(violations)}." if violations else ""
        return float(drugs[0] in cond.treatment), not violations, note

    def _required(self) -> list[str]:
        """Evidence keys the expert gathers for this case, in order (excluding the submission).

        Cached per state: the evidence set only grows during an episode, so its size is the key.
        """
        if self._required_cache[0] != len(self._done):
            self._required_cache = (len(self._done), self._compute_required())
        return self._required_cache[1]

    def _compute_required(self) -> list[str]:
        case = self._case
        if case.kind == "diagnosis":
            return self._diagnosis_keys()
        if case.kind == "triage":
            return ["vitals", "exam:neurological", f"search:{self._suspected_cond().name}"]
        if case.kind == "score":
            return [*_SCORE_SOURCES[self._score_name()], f"score:{case.score}"]
        cond = self._suspected_cond()
        keys = ["ask:allergies", "ask:medications", "ask:history", f"search:{cond.name}"]
        for drug in cond.treatment:
            keys.append(f"drug:{drug}")
            if drug == case.answer:
                break
        return keys

    def _diagnosis_keys(self) -> list[str]:
        """Vitals, the most telling exam for the complaint, then tests by candidate elimination."""
        record = self._case.record
        system, relevant = _complaint_profile(record.complaint)
        ordered = frozenset(
            k[5:] for k in self._done if k.startswith("test:") and k[5:] in relevant
        )
        tests = _elimination(record.complaint, record.condition, ordered)
        return ["vitals", f"exam:{system}", *(f"test:{t}" for t in tests)]

    def _process(self) -> float:
        required = [k for k in self._required() if not k.startswith("search:")]
        return sum(k in self._done for k in required) / len(required) if required else 1.0

    # ------------------------------------------------------------------ expert and privileged info

    def plan(self) -> list[str]:
        """The expert's remaining tool calls from the current state, ending with the submission."""
        if self.ended:
            return []
        case = self._case
        actions = [
            _key_action(k)
            for k in self._required()
            if k not in self._done and not k.startswith("score:")
        ]
        if case.kind == "score":
            if f"score:{case.score}" not in self._done:
                inputs = score_inputs(self.kb, case.record, self._score_name(), case.suspected)
                actions.append(_call("compute_score", score=case.score, inputs=inputs))
        answer = (
            self.kb.conditions[case.answer].name if case.kind == "diagnosis" else case.answer_text
        )
        actions.append(_call("submit_answer", answer=answer))
        return actions

    def expert_action(self) -> str:
        """The expert's next tool call (JSON) from the current state; ``""`` once the episode ended."""
        if self.ended:
            return ""
        for key in self._required():
            if key not in self._done and not key.startswith("score:"):
                return _key_action(key)
        return self.plan()[
            -2
            if self._case.kind == "score" and f"score:{self._case.score}" not in self._done
            else -1
        ]

    def _reason(self) -> str:
        case, kb = self._case, self.kb
        cond = kb.conditions[case.record.condition]
        if case.kind == "diagnosis":
            found = "; ".join(f"{t} showed {r}" for t, r in cond.tests.items())
            return (
                found
                or f"all tests were normal and the history ({', '.join(cond.symptoms[:2])}) fits"
            )
        if case.kind == "triage":
            return f"the vital signs and GCS combined with the triage category {cond.triage} of {cond.name} give level {case.answer}"
        if case.kind == "score":
            inputs = score_inputs(kb, case.record, self._score_name(), case.suspected)
            return f"{SCORES[self._score_name()].label} with inputs {json.dumps(inputs)} is {case.answer_text}"
        unsafe = {
            d: drug_safety(kb, case.record, d, cond)[0]
            for d in cond.treatment
            if d not in case.safe_drugs
        }
        why = "; ".join(f"{d} is unsafe ({', '.join(v)})" for d, v in unsafe.items())
        return f"{case.answer} is the first safe first-line drug for {cond.name}" + (
            f"; {why}" if why else ""
        )

    def _hint(self) -> str:
        case, kb = self._case, self.kb
        cond = kb.conditions[case.record.condition]
        if case.kind == "diagnosis":
            if cond.tests:
                return f"Order the {next(iter(cond.tests)).replace('_', ' ')}; it is decisive in this case."
            return "No test will be abnormal here; the history decides."
        if case.kind == "triage":
            return (
                f"Measure the vitals and the GCS, then look up the triage category of {cond.name}."
            )
        if case.kind == "score":
            sources = ", ".join(_SCORE_SOURCES[self._score_name()])
            return f"Gather the {SCORES[self._score_name()].label} inputs from {sources} before computing it."
        first = cond.treatment[0]
        if first not in case.safe_drugs:
            return f"{first} is not safe for this patient; check the alternatives with check_drug."
        return f"{first} is safe for this patient; confirm with check_drug."

    def _privileged(self) -> Privileged:
        case = self._case
        plan = self.plan()
        reason = self._reason()
        subgoals = [self._subgoal(a) for a in plan]
        return Privileged(
            answer=case.answer_text,
            plan=plan,
            next_action=plan[0] if plan else "",
            subgoals=subgoals,
            state_facts=_case_facts(self.kb, case),
            rubric=self._rubric(),
            hint=self._hint(),
            hints={
                "reinforcing": f"That was right: {reason}.",
                "corrective": f"The correct answer was {case.answer_text}: {reason}. {self._hint()}",
            },
        )

    @staticmethod
    def _subgoal(action: str) -> str:
        call = json.loads(action)
        args = call["arguments"]
        return (
            f"{call['name']}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
            if args
            else call["name"]
        )

    def _rubric(self) -> str:
        case = self._case
        if case.kind == "diagnosis":
            cond = self.kb.conditions[case.answer]
            return f"1.0 if the submitted diagnosis is {cond.name} or a synonym ({', '.join(cond.synonyms)}); else 0."
        if case.kind == "triage":
            return f"1.0 for exactly triage level {case.answer}; else 0."
        if case.kind == "score":
            return f"1.0 if the submitted {SCORES[self._score_name()].label} is within {SCORES[self._score_name()].tolerance:g} of {case.answer_text}; else 0."
        return (
            f"1.0 for a safe first-line drug ({', '.join(case.safe_drugs)}); a first-line drug that is unsafe for this "
            f"patient is capped at {SAFETY_CAP}; any other drug 0."
        )

    def privileged_text(self, strength: str) -> str:
        if strength == "answer" and self.case is not None:
            return f"The answer is: {self.case.answer_text}. Why: {self._reason()}."
        return super().privileged_text(strength)

    def _outcome(self) -> str:
        if self._submitted is None:
            return super()._outcome()
        b = self._breakdown
        verdict = (
            "correct"
            if b["total"] == 1.0
            else ("correct but unsafe" if b["correct"] and not b["safety"] else "wrong")
        )
        return f"The agent submitted '{self._submitted.strip()}', which was {verdict}; the expected answer was {self._case.answer_text}."

    # ------------------------------------------------------------------ text

    def _intro(self) -> str:
        case = self._case
        r = case.record
        who = "woman" if r.sex == "F" else "man"
        article = "an" if str(r.age).startswith("8") or r.age in (11, 18) else "a"
        lines = [
            f"Case {self.task_id}: {article} {r.age}-year-old {who} presents to the emergency department with {r.complaint}."
        ]
        if case.suspected is not None:
            name = self._suspected_cond().name
            lines.append(
                f"The diagnosis of {name} has been confirmed."
                if case.kind == "treatment"
                else f"Referral note: suspected {name}."
            )
        lines.append(
            _TASK_TEXT[case.kind].format(
                score=SCORES[self._score_name()].label if case.score else ""
            )
        )
        lines.append("Use one tool call per turn; every call costs a turn.")
        return "\n".join(lines)

    @property
    def instructions(self) -> str:
        return _instructions()


_TASK_TEXT = {
    "diagnosis": "Task: find the most likely diagnosis and submit it with submit_answer.",
    "triage": "Task: assign the triage level (1 = resuscitation ... 5 = non-urgent) following the protocol and submit the number.",
    "score": "Task: compute the {score} for this patient and submit the number.",
    "treatment": (
        "Task: choose the first-line drug for this patient. It must be safe for this patient "
        "(allergies, current medications, contraindications). Submit one drug name."
    ),
}


# --------------------------------------------------------------------------- module helpers (cached)


@lru_cache(maxsize=1)
def _schemas() -> list[dict[str, Any]]:
    return build_schemas([getattr(ClinicalEnv, n) for n in _TOOL_NAMES])


@lru_cache(maxsize=1)
def _validator() -> ArgumentValidator:
    return ArgumentValidator(_schemas())


_TOOL_NAMES = (
    "ask_patient",
    "measure_vitals",
    "examine",
    "order_test",
    "check_drug",
    "compute_score",
    "search_knowledge",
    "submit_answer",
)


@lru_cache(maxsize=1)
def _test_names_cached() -> tuple[str, ...]:
    kb = load_knowledge()
    return tuple(sorted([*kb.text_tests, *kb.panels]))


def _test_names(kb: KnowledgeBase) -> tuple[str, ...]:
    return _test_names_cached()


def _test_result(kb: KnowledgeBase, case: Case, test: str) -> str:
    record = case.record
    if test in kb.panels:
        parts = []
        for name in kb.panels[test]:
            a = kb.analytes[name]
            value = record.labs[name]
            shown = f"{value:.{a.decimals}f}"
            flag = " (high)" if value > a.normal[1] else (" (low)" if value < a.normal[0] else "")
            parts.append(f"{a.label} {shown} {a.unit}{flag}".replace(" %", "%"))
        return ", ".join(parts)
    if test == "pregnancy_test":
        return "urine beta-hCG positive" if record.pregnant else kb.text_tests[test]
    return kb.test_result_for(kb.conditions[record.condition], test)


def _answer_question(kb: KnowledgeBase, case: Case, topic: str) -> str:
    r = case.record
    cond = kb.conditions[r.condition]
    if topic == "allergies":
        if not r.allergies:
            return "No known drug allergies."
        return (
            "Allergies: "
            + "; ".join(f"{a} (reaction: {kb.allergy_groups[a]['reaction']})" for a in r.allergies)
            + "."
        )
    if topic == "medications":
        return (
            ("Current medications: " + ", ".join(r.medications) + ".")
            if r.medications
            else "No regular medications."
        )
    if topic == "pregnancy":
        if r.sex == "M":
            return "Not applicable (male patient)."
        return "Yes, I am pregnant." if r.pregnant else "No, I am not pregnant."
    if topic == "history":
        items = [HISTORY_FLAGS[f] for f in HISTORY_FLAGS if f in r.history]
        if r.pregnant:
            items.append("currently pregnant")
        return (
            ("Past medical and social history: " + "; ".join(items) + ".")
            if items
            else "No significant past medical history."
        )
    if topic == "onset":
        return f"It started about {cond.onset} ago."
    if topic == "pain":
        if cond.pain:
            extra = f" (HEART history: {r.heart_history} suspicious)" if r.heart_history else ""
            return f"The patient describes {cond.pain}{extra}."
        painful = [s for s in r.symptoms if "pain" in s or "ache" in s]
        return (
            ("The patient reports: " + "; ".join(painful) + ".")
            if painful
            else "The patient reports no pain."
        )
    return "The patient reports: " + "; ".join(r.symptoms) + "."


def _describe_condition(kb: KnowledgeBase, cond: Condition) -> str:
    tests = (
        "; ".join(f"{t} -> {r}" for t, r in cond.tests.items())
        or "none (clinical diagnosis; tests are normal)"
    )
    exam = "; ".join(f"{s}: {', '.join(f)}" for s, f in cond.exam.items())
    avoid = ", ".join(cond.contraindicated) or "nothing specific"
    return (
        f"{cond.name} ({cond.domain}). Also called: {', '.join(cond.synonyms)}. Presents with: {', '.join(cond.complaints)}. "
        f"Symptoms: {', '.join(cond.symptoms)}. Exam: {exam}. Key tests: {tests}. "
        f"First-line treatment in order of preference: {', '.join(cond.treatment)}. Avoid: {avoid}. "
        f"Triage category: {cond.triage}."
    )


def _describe_drug(kb: KnowledgeBase, name: str) -> str:
    d = kb.drugs[name]
    contra = ", ".join(f.replace("_", " ") for f in d.contraindicated_in) or "none listed"
    inter = [
        f"{it.b if it.a in (name, d.drug_class) else it.a} ({it.severity}: {it.effect})"
        for it in kb.interactions
        if name in (it.a, it.b) or d.drug_class in (it.a, it.b)
    ]
    group = f"allergy group {d.allergy_group}" if d.allergy_group else "no allergy group"
    return (
        f"{name}: {d.drug_class}, {group}. Contraindicated in: {contra}. "
        f"Interactions: {', '.join(inter) or 'none listed'}."
    )


def _search(kb: KnowledgeBase, query: str) -> tuple[str, list[str]]:
    """``(text, condition ids shown)`` for a knowledge-table query."""
    q = normalize(query)
    if q in ("test", "tests", "investigations"):
        return "Available tests: " + ", ".join(_test_names(kb)) + ".", []
    if q in ("score", "scores"):
        return "Scores: " + " ".join(s.describe() for s in SCORES.values()), []
    score = next((s for s in SCORES.values() if q in (normalize(s.name), normalize(s.label))), None)
    if score is not None:
        return score.describe(), []
    cid = match_condition(kb, query)
    if cid is not None:
        return _describe_condition(kb, kb.conditions[cid]), [cid]
    drugs = match_drugs(kb, query)
    if drugs:
        return " ".join(_describe_drug(kb, d) for d in drugs[:3]), []
    test = kb.resolve_test(query)
    if test is not None:
        return (
            f"{test}: normal result is '{kb.text_tests.get(test, 'within the reference ranges')}'.",
            [],
        )
    words = [w for w in q.split() if len(w) > 3]
    hits = [
        c.name
        for c in kb.conditions.values()
        if words
        and all(any(w in normalize(t) for t in (*c.complaints, *c.symptoms)) for w in words)
    ]
    if hits:
        return f"Conditions matching '{query}': " + ", ".join(hits[:12]) + ".", []
    return f"No entry found for '{query}'.", []


def _case_facts(kb: KnowledgeBase, case: Case) -> list[str]:
    r = case.record
    cond = kb.conditions[r.condition]
    v = r.vitals
    facts = [
        f"task kind: {case.kind}",
        f"hidden condition: {cond.name}",
        f"patient: {r.age}-year-old {'female' if r.sex == 'F' else 'male'}{', pregnant' if r.pregnant else ''}",
        f"complaint: {r.complaint}",
        f"symptoms: {'; '.join(r.symptoms)}",
        f"vitals: T {v['temp']:.1f}, HR {v['hr']:.0f}, RR {v['rr']:.0f}, BP {v['sbp']:.0f}/{v['dbp']:.0f}, SpO2 {v['spo2']:.0f}, GCS {r.gcs}",
        *(f"exam {s}: {t}" for s, t in r.exam.items()),
        *(f"test {t}: {res}" for t, res in cond.tests.items()),
        f"history: {', '.join(sorted(r.history)) or 'none'}",
        f"allergies: {', '.join(r.allergies) or 'none'}",
        f"medications: {', '.join(r.medications) or 'none'}",
        f"answer: {case.answer_text}",
    ]
    if case.score:
        facts.append(f"score inputs: {json.dumps(score_inputs(kb, r, case.score, case.suspected))}")
    return facts


def _best_split(kb: KnowledgeBase, candidates: list[Condition], ordered: set[str]) -> str:
    """The unordered decisive test whose results split ``candidates`` into the most groups."""
    tests = sorted({t for c in candidates for t in c.tests} - ordered)
    return max(
        tests, key=lambda t: (len({kb.test_result_for(c, t) for c in candidates}), -tests.index(t))
    )


@cache
def _complaint_profile(complaint: str) -> tuple[str, frozenset[str]]:
    """(exam system most often abnormal, decisive tests) over the conditions with ``complaint``."""
    kb = load_knowledge()
    candidates = [c for c in kb.conditions.values() if complaint in c.complaints]
    systems = Counter(s for c in candidates for s in c.exam)
    order = list(EXAM_SYSTEMS)
    system = max(order, key=lambda s: (systems[s], -order.index(s)))
    return system, frozenset(t for c in candidates for t in c.tests)


@lru_cache(maxsize=65536)
def _elimination(complaint: str, condition: str, ordered: frozenset[str]) -> tuple[str, ...]:
    """Tests still to order so that only ``condition`` stays compatible with all results.

    Start from the conditions with ``complaint``, keep those whose result on every ordered test
    equals the true condition's, then greedily order the test that splits the rest into the most
    groups. Terminates because the table guarantees every pair of conditions differs on a test.
    """
    kb = load_knowledge()
    truth = kb.conditions[condition]
    candidates = [c for c in kb.conditions.values() if complaint in c.complaints]
    done = set(ordered)
    for test in ordered:
        result = kb.test_result_for(truth, test)
        candidates = [c for c in candidates if kb.test_result_for(c, test) == result]
    out: list[str] = []
    while len(candidates) > 1:
        test = _best_split(kb, candidates, done)
        done.add(test)
        out.append(test)
        result = kb.test_result_for(truth, test)
        candidates = [c for c in candidates if kb.test_result_for(c, test) == result]
    return tuple(out)


@lru_cache(maxsize=1)
def _instructions() -> str:
    scores = "\n".join(f"- {s.describe()}" for s in SCORES.values())
    return f"""You are the clinician in a simulated emergency department. The cases and the knowledge table are synthetic (written for research on agents) and simplified; this is not medical advice.

Tools (call exactly one per turn as JSON {{"name": ..., "arguments": {{...}}}}, optionally inside <tool_call>...</tool_call>; every call costs a turn):
- ask_patient(question): symptoms, onset, pain, past medical history, medications, allergies, pregnancy.
- measure_vitals(): temperature, heart rate, respiratory rate, blood pressure, SpO2.
- examine(system): one of {", ".join(EXAM_SYSTEMS)}. The neurological exam reports the GCS.
- order_test(test): e.g. chest_xray, ecg, full_blood_count, urea_electrolytes, troponin; search_knowledge("tests") lists all.
- check_drug(drug): checks the drug against the patient's allergies, current medications and contraindications.
- compute_score(score, inputs): evaluates a clinical score.
- search_knowledge(query): looks up a condition (key tests, treatment, triage category), a drug, a score or a symptom.
- submit_answer(answer): ends the case. Gather evidence before submitting.

Protocol:
- Diagnosis: submit the name of the condition (synonyms are accepted).
- Triage level = the more urgent of (a) the vital-sign level and (b) the triage category of the condition in the knowledge table.
  Vital-sign level 1 if SpO2 < 85, systolic BP < 80, RR < 10 or GCS <= 8; else level 2 if HR > 130, RR > 30, SpO2 < 92, systolic BP < 90, GCS < 15 or temperature >= 40.0 C; otherwise no vital-sign level (5). Submit a number 1-5.
- Scores: confusion / altered mentation means GCS < 15; fever means T > 38.0 C (Alvarado: T >= 37.3 C); leukocytosis WBC > 10, left shift neutrophils > 75%; signs of DVT means unilateral calf swelling; the HEART history category is given when the patient describes the pain, the ECG category follows the ECG report; "PE most likely" means the referral suspects pulmonary embolism. Submit the number.
{scores}
- Treatment: submit the first drug of the condition's first-line list (in order of preference) that is safe for this patient. A drug is unsafe if the patient is allergic to its group (penicillin allergy also excludes cephalosporins), it has a major interaction with a current medication, or it is contraindicated for the patient (pregnancy, asthma, renal impairment, ...) or for the condition. An unsafe drug scores at most {SAFETY_CAP}."""
