"""The run report, the terminal log-ratio view and exports, on real runs; and the report loaded in a
real headless Chromium.

Two runs are trained for real into one SQLite store by ``trainers.loop.train`` with ``model=tiny``
(a random 2-layer Llama with the bundled SmolLM2 tokenizer): OPD against a second tiny model as
teacher, evaluated every 2 steps, and SFT. Every reader below reads that store.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from subproc import child_env

from data import Store
from data.cli import main
from data.curves import curves_figure, group_panels, metric_series
from data.report import episode_divergence, mean_log_ratio, select_transcripts

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny", "tasks_per_step=2", "max_turns=2", "max_new_tokens=6",
        "max_context_tokens=1024", "token_budget=2048", "progress=false"]
GROUP_ORDER = ["Outcome", "Learning", "Speed", "Other"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1280,1000"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of two real runs: ``opd`` (3 steps, eval at step 1) and ``sft`` (2 steps)."""
    from trainers.config import parse_config
    from trainers.loop import train
    from trainers.methods import get_method

    out = tmp_path_factory.mktemp("report-runs")
    for method, extra in (
        ("opd", ["teacher=tiny:1", "steps=3", "group_size=2", "eval_every=2", "eval_episodes=2"]),
        ("sft", ["steps=2"]),
    ):
        cfg = parse_config(get_method(method).config_cls,
                           [*TINY, *extra, f"method={method}", f"run_name={method}",
                            f"output_dir={out}"])
        train(cfg)
    return out / "distillgym.db"


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m data ARGS --db DB`` (``--db`` after the command, as a user types it)."""
    return subprocess.run([sys.executable, "-m", "data", *args, "--db", str(db)],
                          capture_output=True, text=True, env=child_env(OMP_NUM_THREADS="1"),
                          timeout=120)


def _report(db: Path, *args: str) -> str:
    """The page ``python -m data report`` writes (run in this process: no second import)."""
    out = Path(tempfile.mkdtemp()) / "report.html"
    assert main(["report", *args, "--out", str(out), "--db", str(db)]) == 0
    return out.read_text()


def _episodes(db: Path, run: str) -> list:
    with Store(db, read_only=True) as store:
        return list(store.episodes_with_steps(store.get_run(run).run_id))


def _steps(db: Path, run: str) -> list:
    with Store(db, read_only=True) as store:
        return store.steps(store.get_run(run).run_id)


# ---------------------------------------------------------------------- curves
def test_every_logged_metric_has_one_panel_in_its_group(runs: Path) -> None:
    steps = _steps(runs, "opd")
    logged = {k for _, m in steps for k in m}
    assert {"success_rate", "eval/success_rate", "tokens_per_s", "time_rollout_s", "turns"} <= logged
    panels = group_panels(metric_series(steps))
    placed = [m for p in panels for m in p.metrics]
    assert sorted(placed) == sorted(logged)  # all of them, each once
    groups = [p.group for p in panels]
    assert sorted(set(groups), key=groups.index) == GROUP_ORDER and groups == sorted(
        groups, key=GROUP_ORDER.index)
    by_title = {p.title: p for p in panels}
    assert by_title["success rate"].group == "Outcome"
    assert list(by_title["success rate"].eval) == ["success_rate"]  # eval beside training
    assert {"kl_teacher", "kl_old"} <= set(by_title["KL"].train)
    assert by_title["clip fraction"].group == by_title["entropy"].group == "Learning"
    assert by_title["time split (s/step)"].stacked and by_title["tokens/s"].group == "Speed"
    assert by_title["grad_norm"].group == "Other"


def test_curves_have_integer_step_ticks_and_distinct_eval_points(runs: Path) -> None:
    import matplotlib.pyplot as plt

    panels = group_panels(metric_series(_steps(runs, "opd")))
    fig = curves_figure(panels)
    try:
        axes = [ax for ax in fig.get_axes() if ax.get_title()]
        assert [ax.get_title() for ax in axes] == [p.title for p in panels]
        group_titles = [sub.get_suptitle() for sub in fig.subfigs]
        assert group_titles == GROUP_ORDER
        for ax in axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
        success = next(ax for ax in axes if ax.get_title() == "success rate")
        (train_line, eval_line) = success.get_lines()
        assert list(train_line.get_xdata()) == [0, 1, 2] and list(eval_line.get_xdata()) == [1]
        assert (eval_line.get_marker(), eval_line.get_linestyle()) == ("s", "--")
        assert train_line.get_marker() != eval_line.get_marker()
        assert train_line.get_color() != eval_line.get_color()
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------- log-ratios
def test_log_ratio_means_and_colours_cover_trained_tokens_only(runs: Path) -> None:
    episodes = _episodes(runs, "opd")
    index, (step, ep) = next((i, e) for i, e in enumerate(episodes)
                             if any(0 in t.loss_mask for t in e[1].turns))
    turn = next(t for t in ep.turns if 0 in t.loss_mask)  # the appended end-of-turn tokens
    trained = [te - s for s, te, m in zip(turn.sampler_logprobs, turn.teacher_logprobs,
                                          turn.loss_mask) if m]
    assert mean_log_ratio(turn) == pytest.approx(sum(trained) / len(trained))
    every = [r for t in ep.turns for r, m in zip(
        (te - s for s, te in zip(t.sampler_logprobs, t.teacher_logprobs)), t.loss_mask) if m]
    assert episode_divergence(ep) == pytest.approx(-sum(every) / len(every))

    show = _cli(runs, "show", "opd", "--episode", str(index), "--logratio")
    assert show.returncode == 0, show.stderr
    assert "log-ratio colour scale" in show.stdout
    assert show.stdout.count("not trained") == 1 + sum(
        m == 0 for t in ep.turns for m in t.loss_mask)  # the legend, then each untrained token
    assert f"mean log-ratio {mean_log_ratio(turn):+.3f} over {len(trained)} trained tokens" in show.stdout

    page = _report(runs, "opd", "--pick", "first", "--episodes", str(index + 1))
    section = page[page.index(f'id="ep-{index}"'):]
    section = section[: section.index("</div>\n", section.index("env (reward"))]
    first_turn = section[: section.index('class="turn env"')]
    t0 = ep.turns[0]
    assert first_turn.count('class="tok"') == sum(t0.loss_mask)
    assert first_turn.count('class="untrained"') == t0.loss_mask.count(0)
    assert 'class="legend"' in page and "rgba(220,50,47" in page


# ---------------------------------------------------------------------- transcripts
def test_transcript_filters_pick_latest_failed_divergent_and_task_type(runs: Path) -> None:
    episodes = _episodes(runs, "opd")
    n = len(episodes)
    assert [i for i, _, _ in select_transcripts(episodes, 3)] == [n - 1, n - 2, n - 3]
    assert [i for i, _, _ in select_transcripts(episodes, 2, "first")] == [0, 1]
    divs = [episode_divergence(ep) for _, ep in episodes]
    top = select_transcripts(episodes, 3, "divergence")
    assert [divs[i] for i, _, _ in top] == sorted(divs, reverse=True)[:3]
    kind = episodes[-1][1].task_type
    typed = select_transcripts(episodes, n, "first", task_type=kind)
    assert typed and {ep.task_type for _, _, ep in typed} == {kind}
    assert len(typed) == sum(ep.task_type == kind for _, ep in episodes)
    failed = select_transcripts(episodes, n, failed=True)
    assert len(failed) == sum(not ep.won for _, ep in episodes) and not any(
        ep.won for _, _, ep in failed)
    sft = _episodes(runs, "sft")  # demonstrations: no teacher, so nothing to rank by divergence
    assert select_transcripts(sft, 3, "divergence") == []
    with pytest.raises(ValueError, match="unknown pick"):
        select_transcripts(episodes, 1, "best")


def test_report_index_links_every_chosen_transcript(runs: Path) -> None:
    episodes = _episodes(runs, "opd")
    kind = episodes[0][1].task_type
    want = [i for i, _, _ in select_transcripts(episodes, 2, "divergence", task_type=kind)]
    page = _report(runs, "opd", "--pick", "divergence", "--task-type", kind, "--episodes", "2")
    index = page[page.index('id="transcript-index"'):]
    index = index[: index.index("</table>")]
    assert re.findall(r'href="#ep-(\d+)"', index) == [str(i) for i in want]
    assert re.findall(r'class="episode" id="ep-(\d+)"', page) == [str(i) for i in want]
    assert f"divergence task type {kind}" in page
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))


# ---------------------------------------------------------------------- browser
def test_report_of_a_real_run_in_headless_chromium(runs: Path, tmp_path: Path) -> None:
    """Chromium loads the report: no console message of level SEVERE (a CSP violation, a broken
    image, a script error), every section there, the curves image decoded, the index links
    jump; a full-page screenshot is kept as ``runs/report-screenshot.png`` (CI artifact)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs both)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = tmp_path / "report.html"
    page.write_text(_report(runs, "opd", "--episodes", "3"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(page.as_uri())
        js = driver.execute_script
        assert driver.title == "DistillGym run opd"
        for section in ("curves", "all-metrics", "metrics", "success", "transcripts",
                        "transcript-index"):
            assert js(f"return document.getElementById('{section}') !== null"), section
        assert js("return [...document.querySelectorAll('h2')].map(h => h.textContent)") == [
            "Learning curves", "All metrics", "Success by task type", "Transcripts"]
        img = js("const i = document.getElementById('curves-png');"
                 " return [i.complete, i.naturalWidth, i.naturalHeight]")
        assert img[0] and img[1] > 800 and img[2] > 600, img
        groups = js("return [...document.querySelectorAll('tr.group th')].map(t => t.textContent)")
        assert groups == GROUP_ORDER
        logged = {k for _, m in _steps(runs, "opd") for k in m}
        shown = js("return [...document.querySelectorAll('#metrics tr:not(.group) td:first-child')]"
                   ".map(t => t.textContent)")
        assert sorted(shown) == sorted(logged)
        assert js("return document.querySelectorAll('.legend .key').length") >= 9
        links = js("return [...document.querySelectorAll('#transcript-index a')]"
                   ".map(a => a.getAttribute('href'))")
        assert len(links) == 3 and js("return document.querySelectorAll('div.episode').length") == 3
        assert js("return document.querySelectorAll('span.tok').length") > 0
        driver.find_element("css selector", f"a[href='{links[1]}']").click()
        assert js("return location.hash") == links[1]
        top = js(f"return document.getElementById('{links[1][1:]}').getBoundingClientRect().top")  # sub-pixel: -0.19 seen
        assert js("return window.scrollY") > 0 and -2 <= top < js("return window.innerHeight")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        height = js("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(int(height), 12000))
        shot = ROOT / "runs" / "report-screenshot.png"
        shot.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
    finally:
        driver.quit()


# ---------------------------------------------------------------------- exports
def test_exports_of_two_methods_share_one_schema_and_concatenate(runs: Path, tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data.export import export_features, export_schema

    for run in ("opd", "sft"):
        for fmt, suffix in (("hf", "-hf"), ("parquet", ".parquet")):
            assert main(["--db", str(runs), "export", run, "--format", fmt,
                         "--out", str(tmp_path / f"{run}{suffix}")]) == 0
    opd, sft = (datasets.load_from_disk(str(tmp_path / f"{r}-hf")) for r in ("opd", "sft"))
    assert opd.features == sft.features == export_features()
    both = datasets.concatenate_datasets([opd, sft])
    assert len(both) == len(opd) + len(sft) == len(_episodes(runs, "opd")) + len(_episodes(runs, "sft"))
    assert set(both["run"]) == {"opd", "sft"}
    first_opd, first_sft = both[0]["turns"][0], both[len(opd)]["turns"][0]
    assert len(first_opd["teacher_logprobs"]) == len(first_opd["completion_ids"])
    assert first_sft["teacher_logprobs"] is None  # method-specific field: null, same column type
    assert json.loads(both[0]["info"]) == _episodes(runs, "opd")[0][1].info
    tables = [pq.read_table(tmp_path / f"{r}.parquet") for r in ("opd", "sft")]
    assert all(t.schema.equals(export_schema()) for t in tables)
    assert pa.concat_tables(tables).num_rows == len(both)
    lp = pa.concat_tables(tables).column("turns").to_pylist()[0][0]["sampler_logprobs"]
    assert all(math.isfinite(x) for x in lp)


def test_db_option_goes_before_or_after_the_command(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--db", str(runs)]) == 0
    after = capsys.readouterr().out
    assert main(["--db", str(runs), "runs"]) == 0
    assert capsys.readouterr().out == after and "opd" in after and "sft" in after


def test_the_run_keeps_its_resolved_store_url_and_the_help_names_it(runs: Path) -> None:
    import dataclasses

    from trainers.train_config import TrainConfig

    with Store(runs, read_only=True) as store:
        run = store.get_run("opd")
    assert run.config["store"] == "" and run.config["store_url"] == f"sqlite:///{runs.resolve()}"
    assert f"store sqlite:///{runs.resolve()}" in _report(runs, "opd", "--episodes", "0")
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}["store"]
    assert "sqlite:///<output_dir>/distillgym.db" in help_text and runs.name == "distillgym.db"
