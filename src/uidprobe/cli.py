"""The ``uidprobe`` command.

Exit codes are part of the interface (sendmail's test programs answered with
exit codes, and scripts need the same):

    0   success; ``check``: the verdict is yes; ``show``: a valid, current store
    1   ``check``: the verdict is no; ``model --diff``: the models differ
    2   ``check``: undetermined; ``uidprobe``/``probe``: every observed verdict
        is undetermined; ``model``: some transitions could not run;
        ``export --strict``: the values would be defaults; any command: the
        runner was refused (built for another ABI), no verdict at all
    3   ``show``: no valid, current store (absent, stale, invalid, unsafe)
    64  bad arguments or an unknown probe name (EX_USAGE)
    65  ``model --diff``: a file is not a model (EX_DATAERR)
    66  ``model --diff``: a file cannot be read (EX_NOINPUT)
    73  a path could not be written, or was refused as unsafe (EX_CANTCREAT)
    74  standard output could not be written (EX_IOERR: a full disk, /dev/full)
    75  ``configure``: a probe child was disturbed from outside twice; nothing
        was written (EX_TEMPFAIL)
    77  ``configure``/``model`` without root (EX_NOPERM)
    129 hung up (SIGHUP); 130 interrupted by SIGINT (Ctrl-C); 143 terminated
        by SIGTERM: every process the command started was ended first

Options belong to the subcommands that honour them and may be written
before or after the subcommand (``uidprobe check X --timeout 5`` and
``uidprobe --timeout 5 check X``); written on both sides, the one after the
subcommand wins.  An option given to a subcommand that does not honour it
(``uidprobe --json check X``) is a usage error, never silently ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, NoReturn, TextIO

from uidprobe.errors import EngineError, UsageError
from uidprobe.exporters import FORMATS as EXPORT_FORMATS
from uidprobe.exporters import result_dict
from uidprobe.names import DEFAULT_TIMEOUT, MODEL_IDS, VERSION
from uidprobe.store import DEFAULT_PATH as DEFAULT_STORE

if TYPE_CHECKING:
    from uidprobe.engine import Engine
    from uidprobe.resolve import Snapshot
    from uidprobe.verdicts import Result

__all__ = ["EXPORT_FORMATS", "UsageError", "build_parser", "main", "result_dict"]

EX_OK = 0
EX_FALSE = 1
EX_UNDETERMINED = 2
EX_INCOMPLETE = 2  # model: transitions not run; export --strict: defaults
EX_NOSTORE = 3
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75  # configure: a probe child was disturbed from outside; try again
EX_SOFTWARE = 70  # an internal error (a bug): the traceback is printed
EX_NOPERM = 77
EX_SIGINT = 128 + signal.SIGINT
EX_SIGTERM = 128 + signal.SIGTERM
EX_SIGHUP = 128 + signal.SIGHUP

_EPILOG = """\
verdicts:
  yes           the mechanism works here: the child made the calls and read
                every id back as required
  no            the platform misbehaved; the reason names the call and ids
  undetermined  this process could not test (not root, no CAP_SETUID, a
                sandbox, unmapped ids); its config value is the safe 0

exit codes: 0 ok (check: yes; show: valid, current store),
            1 check: no (model --diff: differences),
            2 check: undetermined; probe: every verdict undetermined;
              model: transitions not run; export --strict: only defaults;
              the runner refused (built for another ABI), no verdict,
            3 show: no valid, current store, 64 bad usage,
            65 not a model file, 66 cannot read, 73 cannot write (or
            refused: unsafe path), 74 cannot write standard output,
            75 configure: disturbed from outside, nothing written,
            77 needs root, 129 hung up, 130 interrupted (Ctrl-C),
            143 terminated

examples:
  uidprobe                         probe (as root) and print every verdict
  uidprobe check USESETEUID        exit status answers the question
  uidprobe explain HASSETREUID     each call, what the ids should be and are
  uidprobe configure               install time, as root: probe and persist
  uidprobe configure --if-stale    the same, only when the store is not valid
  uidprobe show                    what importing programs get, and why
  uidprobe export config-h         #define lines for a C build (also: cflags,
                                   shell, json, prometheus)
  uidprobe model --format dot      every uid state and call, as a graph
  uidprobe model --diff a.json b.json
                                   where two systems differ

options belong to their command: 'uidprobe COMMAND --help' lists them.  They
may also come before it (uidprobe --json show); an option the command does
not honour is an error (uidprobe --json check X exits 64).

store: {default}
  unless $UIDPROBE_STORE or --store says otherwise; trusted only if it is a
  regular file and it and every directory above it (symlinks included) are
  owned by root, or by you when your real, effective and saved uids are all
  yours, and not writable by group or others (a root-owned sticky directory
  such as /tmp is fine); and only on the kernel and C library it was measured
  on.  configure, export -o and model -o refuse to write where that fails.
"""


class _ParserError(UsageError):
    """A usage error found by the parser of ``prog`` ("uidprobe check")."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ParserError(message, self.prog)


# ------------------------------------------------------------ option types


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


def _path(text: str) -> str:
    """A path option: an empty one is a mistake, never "the default"."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    return text


def _runner(text: str) -> str:
    path = os.path.abspath(_path(text))
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise argparse.ArgumentTypeError(f"runner {text!r} is not an executable file")
    return path


# ------------------------------------------------------------ parent parsers
#
# Each group of options is one parent parser, shared by the subcommands that
# honour it.  The top-level parser carries the default command's groups under
# "top_" destinations, so that after parsing we can tell an option written
# before the subcommand from one written after it (argparse would otherwise
# let the subcommand's default overwrite it: `uidprobe --json show` printed
# text).  Every default here is None, meaning "not given"; _DEFAULTS fills in.

_DEFAULTS: dict[str, Any] = {
    "json": False,
    "color": "auto",
    "uids": None,
    "gids": None,
    "timeout": None,  # the engine's DEFAULT_TIMEOUT
    "runner": None,
    "store": None,
    "quiet": False,
}

#: option group -> [(flags, dest, add_argument keywords)]
_GROUPS: dict[str, list[tuple[tuple[str, ...], str, dict[str, Any]]]] = {
    "json": [(("--json",), "json", {"action": "store_true", "help": "machine-readable output (sorted keys)"})],
    "color": [
        (
            ("--color",),
            "color",
            {
                "choices": ("auto", "always", "never"),
                "help": "colour the verdicts (default auto: only on a terminal, and not with NO_COLOR)",
            },
        )
    ],
    "ids": [
        (
            ("--uids",),
            "uids",
            {"type": _ids, "metavar": "U,A,B", "help": "the ordinary uids to switch between"},
        ),
        (
            ("--gids",),
            "gids",
            {"type": _ids, "metavar": "U,A,B", "help": "the ordinary gids to switch between"},
        ),
    ],
    "engine": [
        (
            ("--timeout",),
            "timeout",
            {
                "type": _timeout,
                "metavar": "SECONDS",
                "help": f"kill a probe child after this long (default {DEFAULT_TIMEOUT:g})",
            },
        ),
        (
            ("--runner",),
            "runner",
            {
                "type": _runner,
                "metavar": "PATH",
                "help": "fork the probe children from this runner program (one built against another C "
                "library, e.g. musl) instead of the installed one; never falls back to forking here",
            },
        ),
    ],
    "store": [
        (
            ("--store",),
            "store",
            {"type": _path, "metavar": "PATH", "help": f"the store file (default: $UIDPROBE_STORE or {DEFAULT_STORE})"},
        )
    ],
    "quiet": [
        (
            ("-q", "--quiet"),
            "quiet",
            {"action": "store_true", "help": "print nothing but errors (no progress line, no result line)"},
        )
    ],
}

#: subcommand -> the option groups it honours
_COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "probe": ("json", "color", "ids", "engine"),
    "check": ("ids", "engine", "quiet"),
    "explain": ("ids", "engine"),
    "list": (),
    "configure": ("store", "ids", "engine", "quiet"),
    "show": ("store", "json"),
    "export": ("store",),
    "model": ("engine", "quiet"),
}
_DEFAULT_COMMAND = "probe"


def _parent(group: str, prefix: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    for flags, dest, kwargs in _GROUPS[group]:
        # Before the command (prefix "top_") accepted, but listed only in the command's help.
        shown = {**kwargs, "help": argparse.SUPPRESS} if prefix else kwargs
        p.add_argument(*flags, dest=prefix + dest, default=None, **shown)
    return p


def _command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parents = [_parent(g) for g in _COMMAND_GROUPS[name]]
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=parents, **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uidprobe",
        description="Probe how this platform's seteuid, setreuid, setuid and their gid twins\n"
        "really behave, in forked children, and print the verdicts.  Run as root: the\n"
        "probes start from the state of a set-user-ID-root program.  With no COMMAND,\n"
        "run probe.",
        epilog=_EPILOG.format(default=DEFAULT_STORE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_parent(g, "top_") for g in _COMMAND_GROUPS[_DEFAULT_COMMAND]],
    )
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _command(
        sub,
        "probe",
        help="probe and print the verdicts (the default)",
        description="Probe every name and print a table: value, verdict and reason.  Exit 2 when "
        "every verdict is undetermined (this process could not test).",
    )
    p = _command(
        sub,
        "check",
        help="exit 0 if NAME is yes, 1 if no, 2 if undetermined",
        description="Probe NAME; the exit status is the answer: 0 yes, 1 no, 2 undetermined.",
    )
    p.add_argument("name", metavar="NAME", help="a probe name (see 'uidprobe list')")
    p = _command(
        sub,
        "explain",
        help="each call of NAME in words, and what decided its verdict",
        description="Probe NAME and show each call its child made, in order: what the ids should "
        "be afterwards, what they are, and which call decided the verdict.",
    )
    p.add_argument("name", metavar="NAME", help="a probe name (see 'uidprobe list')")
    _command(
        sub,
        "list",
        help="the probe names and what each one means",
        description="Print every probe name and what a yes means for it (the names are also "
        "the config values and the C macros).",
    )
    p = _command(
        sub,
        "configure",
        help="(root, install time) probe and persist the verdicts to the store",
        description="Probe and write the verdicts to the store atomically (mode 0644), "
        "so that importing programs read them instead of probing.  Needs root.",
    )
    p.add_argument(
        "--if-stale",
        action="store_true",
        help="do nothing (exit 0, one line) when the store is already valid and current: "
        "cheap enough for a boot unit, a cron job or a package hook",
    )
    _command(
        sub,
        "show",
        help="what importing programs get now: values, source, store, age",
        description="Resolve the config values exactly as 'from uidprobe import config' "
        "does, and say where they came from and why a store was ignored.  Exit 0 only "
        "for a valid, current store; 3 otherwise (absent, stale, invalid, unsafe).",
    )
    p = _command(
        sub,
        "export",
        help="the values for other build systems and monitoring",
        description="Print the config values (resolved as 'show' does) in FORMAT: "
        "config-h (#define NAME 1 / /* #undef NAME */), cflags (-DNAME=1 for each 1), "
        "shell (NAME=1 / NAME=0 lines), json, or prometheus (node_exporter textfile "
        "collector).  When the values are defaults (no valid store, no live probe), "
        "one warning line goes to stderr, or with --strict the command fails (exit 2).",
    )
    p.add_argument("format", choices=EXPORT_FORMATS, metavar="FORMAT", help="one of: " + ", ".join(EXPORT_FORMATS))
    p.add_argument("--no-probe", action="store_true", help="never probe live: without a valid store every value is 0")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2, one line) instead of exporting default values",
    )
    p.add_argument(
        "--explicit",
        action="store_true",
        help="config-h only: '#define NAME 0' for no and undetermined too (meson's set10 style)",
    )
    _output_option(p)
    p = _command(
        sub,
        "model",
        help="the full transition model: every id state and call",
        description="Measure every (real, effective, saved) state over the ids {0, A, B} "
        "against every setuid/seteuid/setreuid/setresuid call (2,376 transitions, one "
        "child each), or the gid twins with --gid.  Or compare two saved models.  Exit 2 "
        "when some transitions could not run (the output says which).",
    )
    p.add_argument("--gid", action="store_true", help="the gid model (made by a process with uids A)")
    p.add_argument(
        "--format",
        choices=("summary", "json", "dot"),
        default="summary",
        help="summary (default), json (versioned schema) or dot (Graphviz)",
    )
    _output_option(p)
    p.add_argument(
        "--ids",
        type=_pair,
        default=MODEL_IDS,
        metavar="A,B",
        help=f"the ids behind A and B (default {MODEL_IDS[0]},{MODEL_IDS[1]})",
    )
    p.add_argument(
        "--diff",
        nargs=2,
        type=_path,
        metavar=("A.json", "B.json"),
        help="print the transitions where two saved models differ; exit 1 if any",
    )
    return parser


def _output_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        type=_path,
        metavar="FILE",
        help="write FILE (atomically; refused through a symlink or into an unsafe directory) "
        "instead of standard output ('-')",
    )


def _flag(dest: str) -> str:
    for group in _GROUPS.values():
        for flags, d, _ in group:
            if d == dest:
                return flags[-1]
    return "--" + dest


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then merge the options written before the subcommand into it."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:  # after a command, they are that command's mistake
        prog = f"uidprobe {args.command}" if args.command else "uidprobe"
        raise _ParserError(f"unrecognized arguments: {' '.join(extra)}", prog)
    args.command = args.command or _DEFAULT_COMMAND
    honoured = {d for g in _COMMAND_GROUPS[args.command] for _, d, _ in _GROUPS[g]}
    for dest, default in _DEFAULTS.items():
        before = getattr(args, "top_" + dest, None)
        if hasattr(args, "top_" + dest):
            delattr(args, "top_" + dest)
        if before is not None and dest not in honoured:
            raise _ParserError(f"{_flag(dest)} does not apply to '{args.command}'", f"uidprobe {args.command}")
        if dest not in honoured:
            continue
        if getattr(args, dest, None) is None:
            setattr(args, dest, before if before is not None else default)
    return args


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


def _warn(text: str) -> None:
    sys.stderr.write(f"uidprobe: {text}\n")


class Progress:
    """One self-erasing line on stderr: count, rate, time left.

    Only on a terminal and without --quiet; at most ten redraws a second.
    """

    def __init__(self, what: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else float("inf")
        eta = f"{left:.0f} s left" if left != float("inf") else "time left unknown"
        pct = 100 * done // max(total, 1)
        self.stream.write(f"\r\033[K{self.what}: {done}/{total} ({pct}%), {rate:.0f}/s, {eta}")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


# ---------------------------------------------------------------- commands


def _engine(args: argparse.Namespace) -> Engine | None:
    """The engine to use: the installed one, or one pinned to --runner."""
    if args.runner is None:
        return None
    from uidprobe.engine import Engine

    return Engine(None, runner=args.runner, fallback=False)  # never a silent fork from here


def _timeout_of(args: argparse.Namespace) -> float:
    return float(args.timeout) if args.timeout is not None else DEFAULT_TIMEOUT


def _run(args: argparse.Namespace, names: Sequence[str] | None) -> dict[str, Result]:
    from uidprobe import suite

    try:
        return suite.run(names, uids=args.uids, gids=args.gids, timeout=_timeout_of(args), engine=_engine(args))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _all_undetermined(results: dict[str, Result]) -> bool:
    observed = [r for r in results.values() if r.kind == "observed"]
    return bool(observed) and all(r.verdict is None for r in observed)


def cmd_probe(args: argparse.Namespace, out: TextIO) -> int:
    from uidprobe.exporters import dumps, verdicts_doc

    results = _run(args, None)
    if args.json:
        out.write(dumps(verdicts_doc(results)))
    else:
        print_table(results, _use_color(args.color, out), out)
    if _all_undetermined(results):
        _warn("every verdict is undetermined: this process could not test (see the reasons)")
        _note_stored([n for n, r in results.items() if r.kind == "observed"])
        return EX_UNDETERMINED
    return EX_OK


def _note_stored(names: Sequence[str]) -> None:
    """Where this process could not test, say that the store holds verdicts
    (measured by whoever wrote it: root), which is what programs get here."""
    from uidprobe import store

    loaded = store.load()
    if loaded.results is None:
        return
    if len(names) == 1 and names[0] in loaded.results:
        s = loaded.results[names[0]]
        word = {True: "yes", False: "no", None: "undetermined"}[s.verdict]
        what = f"a stored verdict exists: {names[0]} = {s.value} ({word})"
    else:
        what = "stored verdicts exist"
    _warn(f"note: {what}, in {loaded.path}; see 'uidprobe show'")


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    r = _run(args, [args.name])[args.name]
    if not args.quiet:
        out.write(f"{r.name}: {r.verdict_word}: {r.reason}\n")
        if r.verdict is None:
            _note_stored([r.name])
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

    path = args.store or store.default_path()
    if args.if_stale:
        loaded = store.load(path)
        if loaded.valid:
            if not args.quiet:
                out.write(f"{path} is valid and current; nothing to do\n")
            return EX_OK
    if os.geteuid() != 0:
        _warn(
            f"configure must run as root (euid is {os.geteuid()}): the probes start from a "
            "set-user-ID-root state and the store is read by root processes; nothing was written"
        )
        return EX_NOPERM
    try:
        store.check_writable(path)  # refuse before forking a single probe child
        results = _run(args, None)
        disturbed = [r for r in results.values() if r.disturbed]
        if disturbed:
            # Such a verdict is no fact about this machine: storing its 0
            # would let whoever disturbed the run choose root's values.
            names = ", ".join(r.name for r in disturbed)
            _warn(f"configure: nothing written, {path} left as it was: {names}: {disturbed[0].reason}")
            return EX_TEMPFAIL
        store.save(path, results)  # decides again: the check above was only early
    except store.StoreError as e:
        return _cannot_write(path, e)
    undetermined = [n for n, r in results.items() if r.verdict is None and r.kind == "observed"]
    if not args.quiet:
        out.write(f"wrote {len(results) - 1} verdicts to {path}\n")
    if undetermined:
        _warn(f"warning: undetermined (stored as 0): {', '.join(undetermined)}; see 'uidprobe explain NAME'")
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
    from uidprobe.exporters import dumps, show_doc

    snap = _snapshot(args)
    loaded = snap.loaded
    code = EX_OK if loaded.valid and snap.source == "store" else EX_NOSTORE
    if args.json:
        out.write(dumps(show_doc(snap)))
        return code
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
    return code


def render(fmt: str, snap: Snapshot, explicit: bool = False) -> str:
    """The values in one of EXPORT_FORMATS (see uidprobe.exporters)."""
    from uidprobe.exporters import render as _render

    return _render(fmt, snap, explicit=explicit)


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    if args.explicit and args.format != "config-h":
        raise UsageError(f"--explicit applies only to config-h, not {args.format}")
    if (code := _check_output(args.output)) is not None:
        return code
    snap = _snapshot(args, live=not args.no_probe)
    if snap.source == "default":
        if args.strict:
            _warn(f"strict: no measured values, only defaults: {snap.reason}")
            return EX_INCOMPLETE
        _warn(f"warning: exporting defaults (every value 0): {snap.reason}")
    return _write_output(args.output, render(args.format, snap, args.explicit), out)


def _cannot_write(path: str, e: OSError) -> int:
    _warn(f"cannot write {path}: {e}")
    return EX_CANTCREAT


def _check_output(path: str | None) -> int | None:
    """EX_CANTCREAT now (before any probing) if -o FILE would be refused."""
    if path in (None, "-"):
        return None
    from uidprobe import trust

    try:
        trust.check_writable(str(path))
    except trust.WriteError as e:
        return _cannot_write(str(path), e)
    return None


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
    import json

    from uidprobe import model
    from uidprobe.ids import Family
    from uidprobe.suite import probing_state

    if args.diff:
        try:
            a, b = (model.load(p) for p in args.diff)
        except model.ModelError as e:
            _warn(str(e))
            return EX_DATAERR
        except OSError as e:
            _warn(f"cannot read {e.filename}: {e.strerror}")
            return EX_NOINPUT
        lines = model.diff(a, b)
        out.write("".join(line + "\n" for line in lines))
        out.write(f"{len(lines)} transition(s) differ\n")
        return EX_FALSE if lines else EX_OK
    family = Family.GID if args.gid else Family.UID
    engine = _engine(args)
    why = probing_state(engine).cannot_switch(family)
    if why:
        _warn(f"the model needs root to establish each state; {why}")
        return EX_NOPERM
    if (code := _check_output(args.output)) is not None:
        return code  # refused before 2,376 forks, not after
    progress = Progress(f"{family.value} model", enabled=not args.quiet)
    try:
        m = model.build(
            family, a=args.ids[0], b=args.ids[1], timeout=_timeout_of(args), engine=engine, progress=progress
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    finally:
        progress.clear()
    if args.format == "json":
        text = json.dumps(m.to_json(), indent=1, sort_keys=True) + "\n"
    elif args.format == "dot":
        text = model.to_dot(m)
    else:
        text = model.summary(m)
    code = _write_output(args.output, text, out)
    not_run = [t for t in m.transitions if t.ret is None]
    if code == EX_OK and not_run:
        _warn(
            f"{len(not_run)} of {len(m.transitions)} transitions could not run "
            f"(first: from ({','.join(not_run[0].start)}) {not_run[0].describe()}: {not_run[0].note})"
        )
        return EX_INCOMPLETE
    return code


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


def _stdout_failed(e: OSError) -> int:
    # Keep Python from failing again when it flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    if isinstance(e, BrokenPipeError):
        return EX_OK  # `uidprobe | head`: not an error of ours
    _warn(f"cannot write standard output: {e.strerror or e}")
    return EX_IOERR


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``uidprobe`` script and ``python -m uidprobe``.

    As a program (``argv`` None, main thread) the command runs in a
    supervised worker process (``uidprobe.supervise``), so that SIGINT,
    SIGTERM and SIGHUP end it at once with nothing left running (exit 130,
    143, 129); called with ``argv`` (tests, embedding) it runs here, and
    signals are the caller's business.
    """
    if argv is None and threading.current_thread() is threading.main_thread():
        from uidprobe import supervise

        return supervise.run(lambda: _main(None))
    return _main(argv)


def _emit(text: str, code: int) -> int:
    """Write ``text`` to standard output; EX_IOERR (one line) if that fails."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        return _stdout_failed(e)
    return code


def _main(argv: Sequence[str] | None) -> int:
    buffer = io.StringIO()  # written out at the end, where a write error is caught
    prog = "uidprobe"  # whose help a usage error points to
    try:
        try:
            with contextlib.redirect_stdout(buffer):
                args = parse(argv)
        except SystemExit as e:  # --help, --version: argparse printed into the buffer
            return _emit(buffer.getvalue(), e.code if isinstance(e.code, int) else EX_OK)
        prog = f"uidprobe {args.command}"
        code = COMMANDS[args.command](args, buffer)
        return _emit(buffer.getvalue(), code)
    except UsageError as e:
        sys.stderr.write(f"uidprobe: error: {e} (see '{getattr(e, 'prog', prog)} --help')\n")
        return EX_USAGE
    except EngineError as e:  # e.g. a runner built for another ABI: no verdict at all
        sys.stderr.write(f"uidprobe: {e.strerror or e}\n")
        return EX_UNDETERMINED
