"""Clinical envs: knowledge table, scores, case generator, tools, reward and expert.

Real components only: the bundled JSON table, the real env through ``envs.make``. The generic
contract (check_env, determinism, privileged channel, render) also runs for every clinical id in
``tests/test_envs_api.py``; here it is repeated for the clinical ids with clinical specifics.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs
from envs.clinical import ENV_IDS, ClinicalEnv, KnowledgeTableError, load_knowledge
from envs.clinical.cases import (
    DISTRACTOR_EXAM,
    DISTRACTOR_SYMPTOMS,
    PatientRecord,
    drug_safety,
    match_conditions,
    match_drugs,
    parse_number,
    parse_triage,
    triage_level,
)
from envs.clinical.knowledge import DATA_DIR, EXAM_SYSTEMS
from envs.clinical.scores import (
    SCORES,
    ScoreInputError,
    alvarado,
    call_score,
    centor_mcisaac,
    cha2ds2_vasc,
    curb65,
    heart_score,
    qsofa,
    wells_pe,
)

KB = load_knowledge()
MAIN = "DistillGym/Clinical-v0"


def _call(name: str, **arguments) -> str:
    return json.dumps({"name": name, "arguments": arguments})


def _run_expert(env: gym.Env, task_id: str, limit: int = 30):
    env.reset(options={"task_id": task_id})
    for _ in range(limit):
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
        if terminated or truncated:
            return obs, reward, info
    raise AssertionError(f"expert did not finish {task_id}")


def _record(**overrides) -> PatientRecord:
    base = dict(
        condition="community_acquired_pneumonia",
        age=50,
        sex="M",
        pregnant=False,
        complaint="cough and fever",
        symptoms=("productive cough",),
        vitals={"temp": 37.0, "hr": 80, "rr": 16, "sbp": 120, "dbp": 80, "spo2": 97},
        gcs=15,
        exam={},
        history=frozenset(),
        allergies=(),
        medications=(),
        labs={},
        heart_history="",
    )
    base.update(overrides)
    return PatientRecord(**base)


# --------------------------------------------------------------------------- knowledge table


def test_table_size_domains_and_fields():
    conds = list(KB.conditions.values())
    assert len(conds) >= 40
    assert len({c.domain for c in conds}) >= 6
    for c in conds:
        assert c.symptoms and c.synonyms and c.treatment and c.complaints, c.id
        assert set(c.exam) <= set(EXAM_SYSTEMS), c.id
    assert (
        sum(bool(c.tests) for c in conds) >= len(conds) - 1
    )  # one clinical (all-normal) diagnosis
    assert len(KB.interactions) >= 20 and len(KB.allergy_groups) >= 8


def _copy_table(tmp_path: Path) -> Path:
    for name in ("tests.json", "drugs.json", "conditions.json"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: c[0].update(treatment=["unobtainium"]),
            "'community_acquired_pneumonia': treatment drug 'unobtainium'",
        ),
        (lambda c: c[1].update(synonyms=["pneumonia"]), "synonym 'pneumonia' is already used"),
        (
            lambda c: c[0].update(tests={}) or c[5].update(tests={}),
            "identical results on every test",
        ),
        (lambda c: c[2].update(vitals={"hr": [120, 90]}), "'copd_exacerbation' vitals.hr"),
        (lambda c: c[3].update(triage=9), "'spontaneous_pneumothorax': triage"),
    ],
)
def test_validation_names_the_bad_entry(tmp_path, mutate, message):
    data_dir = _copy_table(tmp_path)
    path = data_dir / "conditions.json"
    raw = json.loads(path.read_text())
    mutate(raw["conditions"])
    path.write_text(json.dumps(raw))
    with pytest.raises(KnowledgeTableError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_knowledge(data_dir)


def test_distractors_carry_no_scored_phrase():
    phrases = (
        "cough",
        "nausea",
        "vomiting",
        "appetite",
        "blood",
        "right iliac fossa",
        "rebound",
        "tonsillar exudate",
        "tender anterior cervical",
        "unilateral calf swelling",
    )
    for text in (*DISTRACTOR_SYMPTOMS, *DISTRACTOR_EXAM.values()):
        assert not any(p in text for p in phrases), text


# --------------------------------------------------------------------------- scores (hand-computed)


def test_curb65_and_qsofa():
    assert curb65(confusion=True, urea_mmol_l=8.0, resp_rate=31, sbp=85, dbp=50, age=70) == 5
    assert curb65(confusion=False, urea_mmol_l=7.0, resp_rate=29, sbp=90, dbp=61, age=64) == 0
    assert curb65(confusion=False, urea_mmol_l=7.1, resp_rate=30, sbp=120, dbp=60, age=65) == 4
    assert qsofa(resp_rate=22, sbp=100, altered_mentation=False) == 2
    assert qsofa(resp_rate=21, sbp=101, altered_mentation=True) == 1


def test_cha2ds2_vasc():
    # 76-year-old woman with hypertension and previous stroke: A2 + H1 + S2 + Sc1 = 6
    assert (
        cha2ds2_vasc(
            chf=False,
            hypertension=True,
            age=76,
            diabetes=False,
            stroke_tia=True,
            vascular_disease=False,
            female=True,
        )
        == 6
    )
    # 70-year-old man with heart failure and diabetes: C1 + D1 + A1 = 3
    assert (
        cha2ds2_vasc(
            chf=True,
            hypertension=False,
            age=70,
            diabetes=True,
            stroke_tia=False,
            vascular_disease=False,
            female=False,
        )
        == 3
    )
    assert cha2ds2_vasc(False, False, 64, False, False, False, False) == 0


def test_wells_pe():
    assert (
        wells_pe(
            dvt_signs=True,
            pe_most_likely=True,
            heart_rate=101,
            immobilization_or_surgery=False,
            previous_dvt_pe=False,
            hemoptysis=True,
            malignancy=False,
        )
        == 8.5
    )
    assert wells_pe(False, False, 100, True, True, False, True) == 4.0


def test_heart_score():
    # H2 E2 A2 (70) R2 (3 factors) T2 (50 > 42 ng/L) = 10
    assert heart_score("highly", "significant", 70, 3, False, 50.0) == 10
    # H0 E0 A0 (40) R1 (1 factor) T0 (14 = ULN) = 1
    assert heart_score("slightly", "normal", 40, 1, False, 14.0) == 1
    # H1 E1 A1 (50) R2 (atherosclerosis) T1 (20 ng/L) = 6
    assert heart_score("moderately", "nonspecific", 50, 0, True, 20.0) == 6
    with pytest.raises(ScoreInputError):
        heart_score("very", "normal", 40, 0, False, 1.0)


def test_centor_and_alvarado():
    assert (
        centor_mcisaac(
            age=10,
            tonsillar_exudate=True,
            tender_anterior_nodes=True,
            fever=True,
            cough_absent=True,
        )
        == 5
    )
    assert (
        centor_mcisaac(
            age=50,
            tonsillar_exudate=False,
            tender_anterior_nodes=False,
            fever=False,
            cough_absent=False,
        )
        == -1
    )
    assert (
        centor_mcisaac(
            age=30,
            tonsillar_exudate=True,
            tender_anterior_nodes=False,
            fever=True,
            cough_absent=False,
        )
        == 2
    )
    assert alvarado(True, True, True, True, True, True, True, True) == 10
    assert alvarado(False, True, False, True, False, False, True, False) == 5


def test_call_score_coerces_and_reports_bad_inputs():
    inputs = {"resp_rate": "24", "sbp": 95, "altered_mentation": "yes"}
    assert call_score("qsofa", inputs) == 3
    with pytest.raises(ScoreInputError, match="missing"):
        call_score("qsofa", {"resp_rate": 24})
    with pytest.raises(ScoreInputError, match="must be bool"):
        call_score("qsofa", {"resp_rate": 24, "sbp": 95, "altered_mentation": "maybe"})
    assert len(SCORES) >= 5


# --------------------------------------------------------------------------- rules


def test_triage_level_rules():
    v = {"temp": 37.0, "hr": 80, "rr": 16, "sbp": 120, "dbp": 80, "spo2": 97}
    assert triage_level(v, 15, 4) == 4
    assert triage_level({**v, "hr": 131}, 15, 4) == 2
    assert triage_level({**v, "spo2": 84}, 15, 3) == 1
    assert triage_level(v, 14, 5) == 2
    assert triage_level(v, 8, 5) == 1
    assert triage_level({**v, "temp": 40.0}, 15, 1) == 1


def test_drug_safety_rules():
    cap = KB.conditions["community_acquired_pneumonia"]
    assert drug_safety(KB, _record(allergies=("penicillin",)), "amoxicillin", cap)[0]
    assert drug_safety(KB, _record(allergies=("penicillin",)), "ceftriaxone", None)[
        0
    ]  # cross-reactive
    assert not drug_safety(KB, _record(allergies=("penicillin",)), "doxycycline", cap)[0]
    assert drug_safety(KB, _record(medications=("warfarin",)), "ibuprofen", None)[0]
    violations, cautions = drug_safety(KB, _record(medications=("sertraline",)), "ibuprofen", None)
    assert not violations and cautions  # moderate interaction: caution only
    assert drug_safety(KB, _record(sex="F", pregnant=True), "doxycycline", cap)[0]
    assert drug_safety(KB, _record(), "propranolol", KB.conditions["asthma_exacerbation"])[0]


def test_answer_parsing():
    assert match_conditions(KB, "Non-ST elevation myocardial infarction") == ["nstemi"]
    assert match_conditions(KB, "The diagnosis is strep throat") == ["streptococcal_pharyngitis"]
    assert len(match_conditions(KB, "pneumonia or PE")) == 2
    assert match_drugs(KB, "Augmentin 625 mg") == ["co-amoxiclav"]
    assert parse_triage("ESI level 2") == 2 and parse_triage("2 or 3") is None
    assert parse_number("CURB-65 = 3") == 3.0 and parse_number("Wells 4.5 points") == 4.5


# --------------------------------------------------------------------------- env contract


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_check_env_and_determinism(env_id):
    check_env(envs.make(env_id).unwrapped)
    a, b = envs.make(env_id), envs.make(env_id)
    trace_a = [a.reset(seed=11)[0]] + [a.step(a.unwrapped.expert_action())[0] for _ in range(3)]
    trace_b = [b.reset(seed=11)[0]] + [b.step(b.unwrapped.expert_action())[0] for _ in range(3)]
    assert trace_a == trace_b
    tid = a.unwrapped.task_id
    assert b.reset(seed=999, options={"task_id": tid})[0] == trace_a[0]
    assert a.unwrapped.family == "clinical"
    assert "not medical advice" in a.unwrapped.instructions


def test_registered_ids_and_tool_schemas():
    assert set(ENV_IDS) <= set(envs.list_envs())
    env = envs.make(MAIN)
    _, info = env.reset(seed=0)
    names = [t["function"]["name"] for t in info["tools"]]
    assert names == [
        "ask_patient",
        "measure_vitals",
        "examine",
        "order_test",
        "check_drug",
        "compute_score",
        "search_knowledge",
        "submit_answer",
    ]
    examine = info["tools"][2]["function"]["parameters"]["properties"]["system"]
    assert examine["enum"] == list(EXAM_SYSTEMS)
    assert env.spec.max_episode_steps == ClinicalEnv.max_episode_steps


def test_expert_solves_500_cases_of_every_kind():
    env = envs.make(MAIN)
    kinds, steps = Counter(), 0
    for split in ("train", "valid_seen", "valid_unseen"):
        for tid in env.unwrapped.task_ids(split, 167 if split != "valid_unseen" else 166):
            obs, reward, info = _run_expert(env, tid)
            assert reward == 1.0 and info["won"], (tid, obs)
            assert info["reward_breakdown"]["process"] == 1.0
            kinds[info["task_type"]] += 1
            steps += env.unwrapped.steps_taken
    assert sum(kinds.values()) == 500 and set(kinds) == {
        "diagnosis",
        "triage",
        "score",
        "treatment",
    }
    assert steps / 500 < 10


def test_every_condition_and_score_is_reachable():
    diag = envs.make("DistillGym/ClinicalDiagnosis-v0").unwrapped
    seen = set()
    for split, n in (("train", 500), ("valid_unseen", 150)):
        for tid in diag.task_ids(split, n):
            diag.reset(options={"task_id": tid})
            seen.add(diag.case.record.condition)
    assert seen == set(KB.conditions), set(KB.conditions) - seen
    score = envs.make("DistillGym/ClinicalScore-v0").unwrapped
    scores, values = set(), Counter()
    for tid in score.task_ids("train", 300):
        score.reset(options={"task_id": tid})
        scores.add(score.case.score)
        values[(score.case.score, score.case.answer)] += 1
    assert scores == set(SCORES)
    assert all(
        len({v for (s, v) in values if s == name}) >= 2 for name in SCORES
    )  # noise varies scores


def test_heldout_split_uses_unseen_conditions():
    env = envs.make(MAIN).unwrapped
    for split, heldout in (("valid_seen", False), ("valid_unseen", True)):
        for tid in env.task_ids(split, 40):
            env.reset(options={"task_id": tid})
            assert KB.conditions[env.case.record.condition].heldout is heldout


def test_test_results_follow_the_hidden_condition():
    env = envs.make("DistillGym/ClinicalDiagnosis-v0").unwrapped
    for tid in env.task_ids("train", 30):
        env.reset(options={"task_id": tid})
        cond = KB.conditions[env.case.record.condition]
        for test, expected in cond.tests.items():
            obs, *_ = env.step(_call("order_test", test=test))
            assert obs == f"{test}: {expected}."
        obs, *_ = env.step(_call("order_test", test="FBC"))  # alias of a panel
        assert obs.startswith("full_blood_count: Hb ")


# --------------------------------------------------------------------------- reward and safety


def _treatment_case(first_unsafe: bool):
    env = envs.make("DistillGym/ClinicalTreatment-v0")
    for tid in env.unwrapped.task_ids("train", 200):
        env.reset(options={"task_id": tid})
        case = env.unwrapped.case
        if (KB.conditions[case.suspected].treatment[0] not in case.safe_drugs) == first_unsafe:
            return env, case
    raise AssertionError("no such case in 200 tasks")


def test_safety_violation_is_capped():
    env, case = _treatment_case(first_unsafe=True)
    unsafe = KB.conditions[case.suspected].treatment[0]
    env.step(_call("ask_patient", question="Any allergies?"))
    obs, reward, terminated, _, info = env.step(_call("submit_answer", answer=unsafe))
    assert terminated and reward == pytest.approx(0.1) and not info["won"]
    assert info["reward_breakdown"]["safety"] == 0.0 and info["reward_breakdown"]["correct"] == 1.0
    assert "Safety violation" in obs


def test_correct_wrong_and_synonym_answers():
    env, case = _treatment_case(first_unsafe=False)
    env.step(_call("check_drug", drug=case.answer))
    *_, reward, terminated, _, info = env.step(_call("submit_answer", answer=case.answer.upper()))
    assert (reward, terminated, info["won"]) == (1.0, True, True)
    diag = envs.make("DistillGym/ClinicalDiagnosis-v0")
    for tid in diag.unwrapped.task_ids("train", 6):
        diag.reset(options={"task_id": tid})
        cond = KB.conditions[diag.unwrapped.case.answer]
        diag.step(_call("measure_vitals"))
        _, reward, terminated, _, info = diag.step(
            _call("submit_answer", answer=f"Diagnosis: {cond.synonyms[-1]}")
        )
        assert (reward, terminated, info["won"]) == (1.0, True, True)
        assert 0.0 < info["reward_breakdown"]["process"] < 1.0  # vitals only, no decisive test
        diag.reset(options={"task_id": tid})
        wrong = next(c for c in KB.conditions.values() if c.id != cond.id)
        diag.step(_call("measure_vitals"))
        _, reward, terminated, _, info = diag.step(_call("submit_answer", answer=wrong.name))
        assert (reward, terminated, info["won"]) == (0.0, True, False)
        assert "wrong" in diag.unwrapped.privileged_text("outcome_hint")


def test_bad_input_gives_errors_without_ending():
    env = envs.make(MAIN).unwrapped
    env.reset(seed=4)
    bad = [
        "I think we should examine the patient",  # free text
        _call("teleport"),  # unknown tool
        _call("examine", system="soul"),  # invalid enum
        _call("order_test", test=42),  # wrong type
        _call("order_test", test="quantum scan"),  # unknown test
        _call("check_drug", drug="snake oil"),  # unknown drug
        _call("measure_vitals", extra=1),  # unknown argument
        _call("compute_score", score="curb65", inputs={"age": 70}),  # missing inputs
        _call("submit_answer", answer="anything"),  # before any evidence
        "<tool_call>"
        + _call("measure_vitals")
        + "</tool_call><tool_call>"
        + _call("measure_vitals")
        + "</tool_call>",
        '{"name": "examine", "arguments": "not json"}',
    ]
    for action in bad:
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.startswith("Error: ") and not info["action_valid"], action
        assert (reward, terminated, truncated) == (0.0, False, False), action
    env.step(_call("measure_vitals"))
    hedges = {
        "diagnosis": "pneumonia or asthma",
        "triage": "2 or 3",
        "score": "no idea",
        "treatment": "amoxicillin or doxycycline",
    }
    for unreadable in ("", "   ", hedges[env.task_type]):
        obs, reward, terminated, _, info = env.step(_call("submit_answer", answer=unreadable))
        assert obs.startswith("Error: ") and not terminated and not info["action_valid"], unreadable
    obs, reward, terminated, _, info = env.step(_call("submit_answer", answer=env.case.answer_text))
    assert terminated and info["action_valid"]
    with pytest.raises(
        envs.EnvStateError
    ):  # a step after the end is a program error (base contract)
        env.step(_call("submit_answer", answer=env.case.answer_text))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda n, a: json.dumps({"name": n, "arguments": a}),
            st.sampled_from(
                [
                    "ask_patient",
                    "measure_vitals",
                    "examine",
                    "order_test",
                    "check_drug",
                    "compute_score",
                    "search_knowledge",
                    "submit_answer",
                    "nope",
                ]
            ),
            st.dictionaries(
                st.sampled_from(
                    [
                        "question",
                        "system",
                        "test",
                        "drug",
                        "score",
                        "inputs",
                        "query",
                        "answer",
                        "x",
                    ]
                ),
                st.one_of(
                    st.text(max_size=40),
                    st.integers(),
                    st.floats(allow_nan=True),
                    st.booleans(),
                    st.none(),
                    st.dictionaries(
                        st.text(max_size=12),
                        st.one_of(st.integers(), st.text(max_size=8)),
                        max_size=4,
                    ),
                ),
                max_size=3,
            ),
        ),
    )
)
def test_fuzzed_actions_never_crash(action):
    env = _FUZZ_ENV
    if env.ended or env.case is None:
        env.reset(seed=len(action))
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs in env.observation_space and not truncated
    if not info["action_valid"]:
        assert obs.startswith("Error: ") and not terminated and reward == 0.0
    if not terminated:
        assert reward == 0.0
    else:
        assert 0.0 <= reward <= 1.0 and json.loads(action)["name"] == "submit_answer"


_FUZZ_ENV = ClinicalEnv(expose_privileged=True)


# --------------------------------------------------------------------------- privileged information


def test_privileged_plan_hints_and_outcome():
    env = envs.make(MAIN, expose_privileged=True)
    for tid in env.unwrapped.task_ids("train", 8):
        obs, info = env.reset(options={"task_id": tid})
        priv = info["privileged"]
        u = env.unwrapped
        assert priv["next_action"] == u.expert_action() == priv["plan"][0]
        assert json.loads(priv["plan"][-1])["name"] == "submit_answer"
        assert any("hidden condition" in f for f in priv["state_facts"])
        if u.task_type == "diagnosis":
            assert priv["answer"] not in obs  # never in the observation
        assert priv["hints"]["reinforcing"] and priv["hints"]["corrective"] and priv["hint"]
        assert u.privileged_text("answer").startswith("The answer is: ")
        while True:
            obs, _, terminated, truncated, info = env.step(u.expert_action())
            if terminated or truncated:
                break
        assert "correct" in info["privileged"]["outcome"]
        assert u.privileged_text("outcome_hint").endswith(
            info["privileged"]["hints"]["reinforcing"]
        )


def test_docs_example_runs():
    text = (Path(__file__).resolve().parents[1] / "docs" / "clinical.md").read_text()
    assert "not medical advice" in text.lower() and "synthetic" in text.lower()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/clinical.md", "exec"), {})


def test_difficulty_scales_distractors():
    env = envs.make("DistillGym/ClinicalDiagnosis-v0").unwrapped
    counts = {}
    for difficulty in ("easy", "hard"):
        n = 0
        for tid in env.task_ids("train", 20):
            env.reset(options={"task_id": tid, "difficulty": difficulty})
            n += sum(s in DISTRACTOR_SYMPTOMS for s in env.case.record.symptoms)
        counts[difficulty] = n
    assert counts == {"easy": 0, "hard": 40}
    with pytest.raises(envs.InvalidOptionError):
        env.reset(options={"difficulty": 7})
