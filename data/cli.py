"""``python -m data``: inspect, replay, export and report the runs in a trajectory store.

Commands (the database is ``--db PATH_OR_URL``, else ``$DISTILLGYM_DB``, else ``runs/distillgym.db``;
every command opens it read-only, so a read-only file can be inspected)::

    python -m data runs                               # table of runs with status and key metrics
    python -m data show RUN [--episode N] [--logratio]
    python -m data replay RUN --episode N             # exit 1 on divergence
    python -m data export RUN --format jsonl|parquet|hf [--out PATH]
    python -m data report RUN [--out report.html] [--pick latest|first|divergence] [--failed]
                              [--task-type T]

Errors in the input (a missing run, a file that is not a store, a newer schema) print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data.errors import StoreError
from data.report import PICKS, TokenText
from data.store import Store, default_db
from data.types import RunRecord

__all__ = ["main", "build_parser"]

DEFAULT_TOKENIZER = "smollm2-135m-instruct"
EXIT_DIVERGED, EXIT_ERROR = 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--db",
        default=None,
        help="database path or SQLAlchemy URL (default: $DISTILLGYM_DB or runs/distillgym.db)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("runs", help="list runs")

    show = sub.add_parser("show", help="print a run's episodes, or one transcript")
    show.add_argument("run")
    show.add_argument(
        "--episode", type=int, default=None, help="episode index in the run (0-based)"
    )
    show.add_argument(
        "--logratio", action="store_true", help="per-token teacher-student log-ratios"
    )
    show.add_argument("--limit", type=int, default=50, help="episodes listed without --episode")
    _tokenizer_arg(show)

    replay = sub.add_parser("replay", help="re-run an episode's actions in its env and compare")
    replay.add_argument("run")
    replay.add_argument("--episode", type=int, required=True)

    export = sub.add_parser("export", help="export a run's episodes")
    export.add_argument("run")
    export.add_argument("--format", choices=("jsonl", "parquet", "hf"), default="jsonl")
    export.add_argument(
        "--out", default=None, help="output file (folder for hf); default RUN.<format>"
    )
    export.add_argument("--step", type=int, default=None)

    report = sub.add_parser("report", help="write a static HTML report")
    report.add_argument("run")
    report.add_argument("--out", default=None, help="default: RUN-report.html")
    report.add_argument("--episodes", type=int, default=5, help="transcripts to include")
    report.add_argument("--pick", choices=PICKS, default="latest",
                        help="which episodes become transcripts: the latest written, the first, "
                             "or the highest teacher-student divergence (default: latest)")
    report.add_argument("--failed", action="store_true", help="transcripts of failed episodes only")
    report.add_argument("--task-type", default=None, help="transcripts of this task type only")
    _tokenizer_arg(report)
    for command in sub.choices.values():  # --db also after the command: `runs --db X`
        command.add_argument("--db", default=argparse.SUPPRESS, help="as before the command")
    return p


def _tokenizer_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer name or path to show token text ('none': show ids; default: the run's config 'model')",
    )


# ---------------------------------------------------------------------- helpers
def _token_text(spec: str | None, run: RunRecord) -> TokenText | None:
    """A function ids -> token strings, or None (ids are shown) when no tokenizer is available."""
    if spec == "none":
        return None
    name = spec or str(run.config.get("model") or DEFAULT_TOKENIZER)
    if name == "tiny" or name.startswith("tiny:"):  # the test model uses the bundled tokenizer
        name = DEFAULT_TOKENIZER
    try:
        from agents.models import load_tokenizer

        tok = load_tokenizer(name)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:
        print(f"note: tokenizer {name!r} unavailable ({exc}); showing token ids", file=sys.stderr)
        return None
    return lambda ids: [tok.decode([int(i)]) for i in ids]


def _console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    # piped output (files, grep, tests) is not wrapped at rich's default 80 columns
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


# ---------------------------------------------------------------------- commands
def cmd_runs(store: Store, _args: argparse.Namespace) -> int:
    from rich.table import Table

    table = Table("name", "method", "status", "steps", "episodes", "success, last step", "last eval")
    for s in store.run_summaries():
        rate = "-" if s.last_success_rate is None else f"{s.last_success_rate:.1%} (step {s.last_step})"
        evaluated = ("-" if s.last_eval_success_rate is None
                     else f"{s.last_eval_success_rate:.1%} (step {s.last_eval_step})")
        table.add_row(s.name, s.method, s.status, str(s.steps), str(s.episodes), rate, evaluated)
    _console().print(table)
    return 0


def cmd_show(store: Store, args: argparse.Namespace) -> int:
    run = store.get_run(args.run)
    if args.episode is None:
        return _list_episodes(store, run, args.limit)
    from rich.text import Text

    from data.terminal import logratio_legend, logratio_view

    con = _console()
    step, ep = store.episode_at_with_step(run.run_id, args.episode)
    token_text = _token_text(args.tokenizer, run) if args.logratio else None
    con.print(
        Text(
            f"run {run.name} · episode {args.episode} · step {step} · {ep.env_id} · task {ep.task_id} ({ep.task_type}) · seed {ep.seed}",
            style="bold",
        )
    )
    con.print(
        Text(
            f"reward {ep.reward:g} · won {ep.won} · end {ep.end_reason} · privileged {ep.privileged} · id {ep.episode_id}"
        )
    )
    if ep.info.get("skill_id") is not None:
        skill = next(
            (s for s in store.skills(run.run_id) if s.skill_id == ep.info["skill_id"]), None
        )
        con.print(
            Text(
                f"teacher skill {ep.info['skill_id']}: {skill.skill if skill else '(not found)'}",
                style="magenta",
            )
        )
    if args.logratio:
        con.print(logratio_legend())
    if ep.initial_observation:
        con.print(Text("[env] ", style="bold blue") + Text(ep.initial_observation))
    for t in ep.turns:
        flag = "" if t.action_valid else "  (invalid)"
        con.print(
            Text(f"[assistant turn {t.index}] ", style="bold green")
            + Text(t.action_text)
            + Text(flag, style="red")
        )
        if args.logratio:
            texts = token_text(t.completion_ids) if token_text else [f"[{i}]" for i in t.completion_ids]
            for renderable in logratio_view(t, texts):
                con.print(renderable)
        con.print(Text(f"[env reward={t.reward:g}] ", style="bold yellow") + Text(t.observation))
    return 0


def _list_episodes(store: Store, run: RunRecord, limit: int) -> int:
    from rich.table import Table

    table = Table(
        "#", "step", "task", "type", "reward", "won", "turns", "end", title=f"run {run.name}"
    )
    for i, (step, ep) in enumerate(store.episodes_with_steps(run.run_id, limit=limit)):
        table.add_row(
            str(i),
            str(step),
            ep.task_id,
            ep.task_type,
            f"{ep.reward:g}",
            str(ep.won),
            str(ep.num_turns),
            ep.end_reason,
        )
    _console().print(table)
    return 0


def cmd_replay(store: Store, args: argparse.Namespace) -> int:
    from data.replay import replay_episode

    run = store.get_run(args.run)
    ep = store.episode_at(run.run_id, args.episode)
    result = replay_episode(ep)
    if result.ok:
        print(
            f"replay ok: {result.turns_checked} turns of episode {args.episode} ({ep.task_id}) match"
        )
        return 0
    assert result.divergence is not None
    print(
        f"replay DIVERGED in episode {args.episode} ({ep.task_id}) at {result.divergence.describe()}"
    )
    return EXIT_DIVERGED


def cmd_export(store: Store, args: argparse.Namespace) -> int:
    from data.export import export_episodes

    run = store.get_run(args.run)
    suffix = {"jsonl": ".jsonl", "parquet": ".parquet", "hf": "-hf"}[args.format]
    out = Path(args.out or f"{run.name}{suffix}")
    n = export_episodes(
        store.episodes_with_steps(run.run_id, step=args.step), out, args.format, run=run.name
    )
    print(f"exported {n} episodes of run {run.name} to {out} ({args.format})")
    return 0


def cmd_report(store: Store, args: argparse.Namespace) -> int:
    from data.report import render_report, select_transcripts

    run = store.get_run(args.run)
    episodes = list(store.episodes_with_steps(run.run_id))
    shown = select_transcripts(episodes, args.episodes, args.pick, args.failed, args.task_type)
    token_text = _token_text(args.tokenizer, run) if shown else None
    selection = " ".join([args.pick, *(["failed"] if args.failed else []),
                          *([f"task type {args.task_type}"] if args.task_type else [])])
    page = render_report(run, store.steps(run.run_id), episodes, shown, token_text, selection)
    out = Path(args.out or f"{run.name}-report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(episodes)} episodes, {len(shown)} transcripts)")
    return 0


COMMANDS = {
    "runs": cmd_runs,
    "show": cmd_show,
    "replay": cmd_replay,
    "export": cmd_export,
    "report": cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = Store(args.db or default_db(), read_only=True)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return COMMANDS[args.command](store, args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        store.close()
