"""The config names, kept free of imports so that reading a persisted store
(``uidprobe.config``) stays cheap.  ``tests/test_config.py`` checks that
OBSERVED matches the scenario table."""

from __future__ import annotations

VERSION = "0.1.0"

#: Seconds before a probe child is killed (the engine's, the CLI's, probe()'s default).
DEFAULT_TIMEOUT = 2.0
#: The ids behind the symbols A and B of the transition model, unless chosen otherwise.
MODEL_IDS = (2, 3)

#: Observed verdicts, in display order (one per entry of scenarios.SCENARIOS).
OBSERVED: tuple[str, ...] = (
    "USESETEUID",
    "HASSETREUID",
    "SETUID_PERMANENT",
    "HASSETRESUID",
    "USESETEGID",
    "HASSETREGID",
    "SETGID_PERMANENT",
    "HASSETRESGID",
    "SETGROUPS_CAN_CLEAR",
    "THREAD_CREDENTIALS",
)

#: Declared by sysconf, not probed: shown beside USESETEUID, never a config value.
DECLARED = "POSIX_SAVED_IDS"
