"""The ``uidprobe`` command.

Exit codes are part of the interface (sendmail's test programs answered with
exit codes, and scripts need the same):

    0   success; for ``check``: the verdict is True
    1   ``check``: the verdict is False
    2   ``check``: undetermined
    1   ``model --diff``: the models differ
    64  bad arguments or an unknown probe name (EX_USAGE)
    65  ``model --diff``: a file is not a model (EX_DATAERR)
    66  ``model --diff``: a file cannot be read (EX_NOINPUT)
    73  a path could not be written, or was refused as unsafe (EX_CANTCREAT)
    77  ``configure`` without root (EX_NOPERM)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TextIO

from uidprobe.names import VERSION
from uidprobe.store import DEFAULT_PATH as DEFAULT_STORE

if TYPE_CHECKING:
    from uidprobe.resolve import Snapshot
    from uidprobe.verdicts import Result

EX_OK = 0
EX_FALSE = 1
EX_UNDETERMINED = 2
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_NOPERM = 77

_EPILOG = """\
verdicts:
  yes           the mechanism works here: the child made the calls and read
                every id back as required
  no            the platform misbehaved; the reason names the call and ids
  undetermined  this process could not test (not root, no CAP_SETUID, a
                sandbox, unmapped ids); its config value is the safe 0

exit codes: 0 ok (check: yes), 1 check: no (model --diff: differences),
            2 check: undetermined, 64 bad usage, 65 not a model file,
            73 cannot write (or refused: unsafe path), 77 needs root

examples:
  uidprobe                         probe (as root) and print every verdict
  uidprobe check USESETEUID        exit status answers the question
  uidprobe explain HASSETREUID     each call, what the ids should be and are
  uidprobe configure               install time, as root: probe and persist
  uidprobe show                    what importing programs get, and why
  uidprobe export config-h         #define lines for a C build (also: cflags,
                                   shell, json)
  uidprobe model --format dot      every uid state and call, as a graph
  uidprobe model --diff a.json b.json   where two systems differ

store: {default} unless $UIDPROBE_STORE or --store says otherwise; trusted
only if it is a regular file and it and every directory above it (symlinks
included) are owned by root, or by you when your real, effective and saved
uids are all yours, and not writable by group or others (a root-owned sticky
directory such as /tmp is fine); and only on the kernel and C library it was
measured on.  configure and model -o refuse to write where that fails.
"""


class UsageError(Exception):
    """Bad input from the user: one line on stderr, exit 64."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _int_list(text: str, names: str) -> tuple[int, ...]:
    """Comma-separated integers, exactly as many as ``names`` ("U,A,B")."""
    count = len(names.split(","))
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {names} as {count} integers, got {text!r}") from None
    if len(parts) != count:
        raise argparse.ArgumentTypeError(f"expected exactly {count} ids {names}, got {text!r}")
    return parts


def _ids(text: str) -> tuple[int, int, int]:
    u, a, b = _int_list(text, "U,A,B")
    return u, a, b


def _pair(text: str) -> tuple[int, int]:
    a, b = _int_list(text, "A,B")
    return a, b


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"timeout must be in (0, 3600] seconds, got {text}")
    return value


def _probe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uids", type=_ids, metavar="U,A,B", help="the ordinary uids the probes switch between")
    p.add_argument("--gids", type=_ids, metavar="U,A,B", help="the ordinary gids the probes switch between")
    p.add_argument(
        "--timeout",
        type=_timeout,
        default=2.0,
        metavar="SECONDS",
        help="kill a probe child after this long (default 2)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uidprobe",
        description="Probe how this platform's seteuid, setreuid, setuid and their gid twins really "
        "behave, in forked children, and print the verdicts.  Run as root: the probes start from "
        "the state of a set-user-ID-root program.",
        epilog=_EPILOG.format(default=DEFAULT_STORE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    parser.add_argument("--json", action="store_true", help="machine-readable output (sorted keys)")
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the verdicts (default: only on a terminal, and not with NO_COLOR)",
    )
    _probe_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("probe", help="probe and print the verdicts (the default)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    p = sub.add_parser(
        "check",
        help="exit 0 if NAME is yes, 1 if no, 2 if undetermined",
        description="Probe NAME; the exit status is the answer: 0 yes, 1 no, 2 undetermined.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only set the exit status")
    p = sub.add_parser("explain", help="each call of NAME in words, and what decided its verdict")
    p.add_argument("name", metavar="NAME")
    p = sub.add_parser("list", help="the probe names and what each one means")

    p = sub.add_parser(
        "configure",
        help="(root, install time) probe and persist the verdicts to the store",
        description="Probe and write the verdicts to the store atomically (mode 0644), "
        "so that importing programs read them instead of probing.  Needs root.",
    )
    _store_option(p)
    p = sub.add_parser(
        "show",
        help="what importing programs get now: values, source, store, age",
        description="Resolve the config values exactly as 'from uidprobe import config' "
        "does, and say where they came from and why a store was ignored.",
    )
    _store_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output (sorted keys)")
    p = sub.add_parser(
        "export",
        help="the values for other build systems",
        description="Print the config values (resolved as 'show' does) in FORMAT: "
        "config-h (#define NAME 1 / /* #undef NAME */), cflags (-DNAME=1 for each 1), "
        "shell (NAME=1 / NAME=0 lines) or json.",
    )
    p.add_argument("format", choices=EXPORT_FORMATS, metavar="FORMAT", help="one of: " + ", ".join(EXPORT_FORMATS))
    _store_option(p)
    p.add_argument("--no-probe", action="store_true", help="never probe live: without a valid store every value is 0")
    p = sub.add_parser(
        "model",
        help="the full transition model: every id state and call",
        description="Measure every (real, effective, saved) state over the ids {0, A, B} "
        "against every setuid/seteuid/setreuid/setresuid call (2,376 transitions, one "
        "child each), or the gid twins with --gid.  Or compare two saved models.",
    )
    p.add_argument("--gid", action="store_true", help="the gid model (made by a process with uids A)")
    p.add_argument(
        "--format",
        choices=("summary", "json", "dot"),
        default="summary",
        help="summary (default), json (versioned schema) or dot (Graphviz)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE (atomically; refused through a symlink or into an unsafe directory) "
        "instead of standard output ('-')",
    )
    p.add_argument("--ids", type=_pair, default=(2, 3), metavar="A,B", help="the ids behind A and B (default 2,3)")
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print the transitions where two saved models differ; exit 1 if any",
    )
    return parser


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH", help=f"the store file (default: $UIDPROBE_STORE or {DEFAULT_STORE})")


# ------------------------------------------------------------------ output


def _use_color(mode: str, stream: TextIO) -> bool:
    if mode == "never":
        return False
    if mode == "always":
        return True
    return stream.isatty() and "NO_COLOR" not in os.environ


def _paint(word: str, verdict: bool | None, color: bool) -> str:
    if not color:
        return word
    code = {True: "32", False: "31", None: "33"}[verdict]
    return f"\033[{code}m{word}\033[0m"


def result_dict(r: Result) -> dict[str, Any]:
    """A Result as JSON-ready data (also the store's per-result shape)."""
    return {
        "name": r.name,
        "verdict": r.verdict,
        "value": r.value,
        "reason": r.reason,
        "kind": r.kind,
        "meaning": r.meaning,
        "trace": [line.describe() for line in r.trace],
    }


def print_table(results: dict[str, Result], color: bool, out: TextIO) -> None:
    width = max(len(n) for n in results)
    out.write(f"{'NAME':<{width}}  VALUE  {'VERDICT':<14}  REASON\n")
    for name, r in results.items():
        word = r.verdict_word + (" (declared)" if r.kind == "declared" else "")
        pad = " " * max(0, 14 - len(word))
        out.write(f"{name:<{width}}  {r.value:^5}  {_paint(word, r.verdict, color)}{pad}  {r.reason}\n")


def explain(r: Result, out: TextIO) -> None:
    out.write(f"{r.name}: {r.verdict_word}\n  means: {r.meaning}\n  reason: {r.reason}\n")
    if not r.trace:
        out.write("  (no child ran: the verdict was decided before probing)\n")
        return
    out.write("  calls, in the order the child made them:\n")
    for i, line in enumerate(r.trace, 1):
        out.write(f"  {i:2}. {line.describe()}\n")


# ---------------------------------------------------------------- commands


def _run(args: argparse.Namespace, names: Sequence[str] | None) -> dict[str, Result]:
    from uidprobe import suite

    try:
        return suite.run(names, uids=args.uids, gids=args.gids, timeout=args.timeout)
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_probe(args: argparse.Namespace, out: TextIO) -> int:
    results = _run(args, None)
    if args.json:
        json.dump({n: result_dict(r) for n, r in results.items()}, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        print_table(results, _use_color(args.color, out), out)
    return EX_OK


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    r = _run(args, [args.name])[args.name]
    if not args.quiet:
        out.write(f"{r.name}: {r.verdict_word}: {r.reason}\n")
    return {True: EX_OK, False: EX_FALSE, None: EX_UNDETERMINED}[r.verdict]


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    explain(_run(args, [args.name])[args.name], out)
    return EX_OK


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    from uidprobe import probes, suite

    for p in probes.PROBES:
        out.write(f"{p.name:<20}  {p.meaning}\n")
    out.write(f"{suite.DECLARED:<20}  declared by sysconf(_SC_SAVED_IDS), not probed\n")
    return EX_OK


def cmd_configure(args: argparse.Namespace, out: TextIO) -> int:
    from uidprobe import store

    if os.geteuid() != 0:
        sys.stderr.write(
            f"uidprobe: configure must run as root (euid is {os.geteuid()}): the probes start from a "
            "set-user-ID-root state and the store is read by root processes; nothing was written\n"
        )
        return EX_NOPERM
    path = args.store or store.default_path()
    try:
        store.check_writable(path)  # refuse before forking a single probe child
        results = _run(args, None)
        store.save(path, results)  # decides again: the check above was only early
    except store.StoreError as e:
        return _cannot_write(path, e)
    undetermined = [n for n, r in results.items() if r.verdict is None and r.kind == "observed"]
    out.write(f"wrote {len(results) - 1} verdicts to {path}\n")
    if undetermined:
        out.write(f"warning: undetermined (stored as 0): {', '.join(undetermined)}; see 'uidprobe explain NAME'\n")
    return EX_OK


def _age(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{int(seconds)} seconds"


def _snapshot(args: argparse.Namespace, live: bool = True) -> Snapshot:
    from uidprobe.resolve import resolve

    return resolve(args.store, live=live)


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    snap = _snapshot(args)
    loaded = snap.loaded
    if args.json:
        doc = {
            "source": snap.source,
            "reason": snap.reason,
            "store": {
                "path": loaded.path,
                "status": loaded.reason,
                "valid": loaded.valid,
                "fingerprint": loaded.fingerprint,
                "created": loaded.created,
                "age_seconds": snap.age,
            },
            "values": snap.values,
            "verdicts": snap.verdicts,
        }
        json.dump(doc, out, indent=2, sort_keys=True)
        out.write("\n")
        return EX_OK
    out.write(f"source:      {snap.source} ({snap.reason})\n")
    out.write(f"store:       {loaded.path}: {loaded.reason}\n")
    if loaded.fingerprint:
        fp = ", ".join(f"{k}={v}" for k, v in sorted(loaded.fingerprint.items()))
        out.write(f"fingerprint: {fp}\n")
    if snap.age is not None:
        out.write(f"age:         {_age(snap.age)}\n")
    width = max(len(n) for n in snap.values)
    for name, value in snap.values.items():
        out.write(f"  {name:<{width}} = {value}   ({snap.reasons[name]})\n")
    return EX_OK


EXPORT_FORMATS = ("config-h", "cflags", "shell", "json")


def render(fmt: str, snap: Snapshot) -> str:
    """The values in one of EXPORT_FORMATS."""
    v = snap.values
    if fmt == "cflags":
        return " ".join(f"-D{n}=1" for n, x in v.items() if x) + "\n"
    if fmt == "shell":
        return "".join(f"{n}={x}\n" for n, x in v.items())
    if fmt == "json":
        return json.dumps({**v, "SOURCE": snap.source}, indent=2, sort_keys=True) + "\n"
    from uidprobe import __version__

    def comment(text: str) -> str:
        return "/* " + text.replace("*/", "* /") + " */"  # a reason must not end the comment

    lines = [
        comment(f"uidprobe {__version__}: probed set*id behaviour"),
        comment(f"source: {snap.source}; {snap.reason}"),
        "",
    ]
    for n, x in v.items():
        lines.append(comment(f"{n}: {snap.reasons[n]}"))
        lines.append(f"#define {n} 1" if x else f"/* #undef {n} */")
    return "\n".join(lines) + "\n"


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    out.write(render(args.format, _snapshot(args, live=not args.no_probe)))
    return EX_OK


def _cannot_write(path: str, e: OSError) -> int:
    sys.stderr.write(f"uidprobe: cannot write {path}: {e}\n")
    return EX_CANTCREAT


def _write_output(path: str | None, text: str, out: TextIO) -> int:
    """Standard output, or FILE through the safe writer: root must not follow
    a symlink another user planted, nor write into a directory they control."""
    from uidprobe import trust

    if path is None or path == "-":
        out.write(text)
        return EX_OK
    try:
        trust.write_atomic(path, text.encode("utf-8"), 0o644)
    except trust.WriteError as e:
        return _cannot_write(path, e)
    return EX_OK


def cmd_model(args: argparse.Namespace, out: TextIO) -> int:
    from uidprobe import model
    from uidprobe.ids import Family
    from uidprobe.process import read_state

    if args.diff:
        try:
            a, b = (model.load(p) for p in args.diff)
        except model.ModelError as e:
            sys.stderr.write(f"uidprobe: {e}\n")
            return EX_DATAERR
        except OSError as e:
            sys.stderr.write(f"uidprobe: cannot read {e.filename}: {e.strerror}\n")
            return EX_NOINPUT
        lines = model.diff(a, b)
        out.write("".join(line + "\n" for line in lines))
        out.write(f"{len(lines)} transition(s) differ\n")
        return EX_FALSE if lines else EX_OK
    family = Family.GID if args.gid else Family.UID
    why = read_state().cannot_switch(family)
    if why:
        sys.stderr.write(f"uidprobe: the model needs root to establish each state; {why}\n")
        return EX_NOPERM
    if args.output not in (None, "-"):
        from uidprobe import trust

        try:
            trust.check_writable(args.output)  # refuse before 2,376 forks, not after
        except trust.WriteError as e:
            return _cannot_write(args.output, e)
    try:
        m = model.build(family, a=args.ids[0], b=args.ids[1], timeout=args.timeout)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.format == "json":
        text = json.dumps(m.to_json(), indent=1, sort_keys=True) + "\n"
    elif args.format == "dot":
        text = model.to_dot(m)
    else:
        text = model.summary(m)
    return _write_output(args.output, text, out)


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "probe": cmd_probe,
    "check": cmd_check,
    "explain": cmd_explain,
    "list": cmd_list,
    "configure": cmd_configure,
    "show": cmd_show,
    "export": cmd_export,
    "model": cmd_model,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uidprobe`` script and ``python -m uidprobe``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return COMMANDS[args.command or "probe"](args, sys.stdout)
    except UsageError as e:
        sys.stderr.write(f"uidprobe: error: {e}\n(see 'uidprobe --help')\n")
        return EX_USAGE
    except BrokenPipeError:
        # `uidprobe | head`: not an error of ours; keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_OK
