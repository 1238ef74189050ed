"""The CLI's error boundary: one line (plus a hint) and a non-zero exit, never a traceback.

``PPCR_DEBUG=1`` re-raises so the full traceback is shown.
Exit codes: 0 success, 1 expected failure (PPCRError), 2 usage error, 3 internal error, 130 interrupt.
"""

from __future__ import annotations

import os
import sys

import click

from ppcr.errors import PPCRError


def debug_enabled() -> bool:
    return os.environ.get("PPCR_DEBUG", "").strip() not in ("", "0", "false", "no")


def _print(message: str, hint: str | None = None) -> None:
    from rich.markup import escape

    from ppcr_cli.console import err

    # Messages are text, not markup: a hint like pip install 'ppcr[demo]' keeps its brackets.
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}", markup=True, soft_wrap=True)


def run_guarded(command: click.Command, args: list[str], prog_name: str = "ppcr") -> int:
    """Run a click command, turning every failure into a short message and an exit code."""
    try:
        result = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except PPCRError as exc:
        if debug_enabled():
            raise
        _print(exc.message.splitlines()[0] if exc.message else type(exc).__name__, exc.hint)
        return 1
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        if debug_enabled():
            raise
        ctx = exc.ctx
        hint = f"run `{ctx.command_path} -h` for usage" if ctx is not None else "run `ppcr -h` for usage"
        _print(exc.format_message().replace("\n", " "), hint)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        _print("aborted")
        return 130
    except KeyboardInterrupt:
        _print("interrupted")
        return 130
    except click.ClickException as exc:
        if debug_enabled():
            raise
        _print(exc.format_message().replace("\n", " "))
        return exc.exit_code or 1
    except Exception as exc:  # an internal bug: still no traceback unless asked for
        if debug_enabled():
            raise
        text = str(exc).splitlines()[0] if str(exc) else ""
        _print(f"internal error: {type(exc).__name__}: {text}", "set PPCR_DEBUG=1 to see the traceback")
        return 3


def main_entry(command: click.Command) -> None:
    sys.exit(run_guarded(command, sys.argv[1:]))
