"""Command line for the envs: ``python -m envs list`` and ``python -m envs play <id>``.

``play`` lets a human play any registered env in the terminal (one action per line on stdin,
until EOF or the end of the episode); ``--expert`` prints the env's expert playing instead.
"""

from __future__ import annotations

import argparse
import sys

try:  # line editing for input() at a terminal (absent on some platforms)
    import readline  # noqa: F401
except ImportError:  # pragma: no cover
    pass
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import envs

__all__ = ["main"]


def _difficulty(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def cmd_list(console: Console) -> int:
    table = Table("id", "family", "max steps", title="DistillGym envs")
    for env_id in envs.list_envs():
        spec = envs.registry.gym.registry[env_id]
        family = getattr(envs.env_class(env_id), "family", "") or "-"
        steps = "-" if spec.max_episode_steps is None else str(spec.max_episode_steps)
        table.add_row(env_id, family, steps)
    console.print(table)
    return 0


def _show_info(console: Console, info: dict[str, Any], show_actions: bool) -> None:
    if show_actions and info.get("admissible_actions"):
        console.print("[dim]actions: " + escape(", ".join(info["admissible_actions"])) + "[/dim]")


def _tool_table(tools: list[dict[str, Any]]) -> Table:
    """The env's tools as signatures: ``name(arg: type, ...)`` and the description."""
    table = Table(title="tools (call as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>)")
    table.add_column("tool")
    table.add_column("what it does")
    for tool in tools:
        spec = tool.get("function", tool)
        props = (spec.get("parameters") or {}).get("properties") or {}
        required = set((spec.get("parameters") or {}).get("required") or [])
        args = ", ".join(f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}" for k, v in props.items())
        table.add_row(escape(f"{spec.get('name', '?')}({args})"), escape(str(spec.get("description", ""))))
    return table


def cmd_play(console: Console, args: argparse.Namespace) -> int:
    env = envs.make(args.env_id)
    options: dict[str, Any] = {}
    if args.difficulty is not None:
        options["difficulty"] = _difficulty(args.difficulty)
    if args.task_id is not None:
        options["task_id"] = args.task_id
    obs, info = env.reset(seed=args.seed, options=options)
    unwrapped = env.unwrapped
    assert isinstance(unwrapped, envs.TextEnv), f"{args.env_id} is not a DistillGym TextEnv"
    console.print(
        f"[bold]{escape(args.env_id)}[/bold]  task {escape(info['task_id'])} "
        f"({escape(info['task_type'])})"
    )
    if args.instructions:
        console.print(escape(getattr(unwrapped, "instructions", "")))
    tools = info.get("tools") or (unwrapped.tool_schemas() if hasattr(unwrapped, "tool_schemas") else None)
    if tools:
        console.print(_tool_table(tools))
    console.print(escape(obs))
    _show_info(console, info, args.actions)
    total, steps = 0.0, 0
    while True:
        if args.expert:
            action = unwrapped.expert_action()
        else:
            if sys.stdin.isatty():  # line editing and history (readline) at a terminal
                try:
                    action = input("> ")
                except EOFError:
                    console.print("\n[dim](end of input)[/dim]")
                    break
            else:
                console.print("[bold cyan]> [/bold cyan]", end="")
                line = sys.stdin.readline()
                if not line:
                    console.print("\n[dim](end of input)[/dim]")
                    break
                action = line.rstrip("\n")
                console.print(escape(action))
        if args.expert:
            console.print(f"[bold cyan]> {escape(action)}[/bold cyan]")
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        style = "" if info.get("action_valid", True) else "[yellow]"
        console.print(style + escape(obs) + ("[/yellow]" if style else ""))
        _show_info(console, info, args.actions)
        if terminated or truncated:
            break
    verdict = "[green]won[/green]" if info.get("won") else "[red]not won[/red]"
    console.print(f"episode over: {verdict}, reward {total:g}, {steps} steps")
    env.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m envs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered env ids with their family and horizon")
    play = sub.add_parser("play", help="play an env in the terminal (actions on stdin)")
    play.add_argument("env_id")
    play.add_argument("--seed", type=int, default=None)
    play.add_argument("--expert", action="store_true", help="let the expert play")
    play.add_argument("--difficulty", default=None)
    play.add_argument("--task-id", default=None, help="e.g. valid_unseen-000003")
    play.add_argument("--actions", action="store_true", help="print admissible actions")
    play.add_argument("--instructions", action="store_true", help="print the env's rules first")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        if args.command == "list":
            return cmd_list(console)
        return cmd_play(console, args)
    except envs.EnvError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
