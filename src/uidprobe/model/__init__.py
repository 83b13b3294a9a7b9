"""The full transition model: every id state, every call, measured here.

Sendmail's tests walk three paths; "Setuid Demystified" (Chen, Wagner, Dean,
USENIX Security 2002) built the whole automaton by forking a child per
(state, call).  This module does the same on the machine at hand:

* uid model: every state (real, effective, saved) over the ids {0, A, B}
  (27 states) and every call setuid(x), seteuid(x), setreuid(x, y),
  setresuid(x, y, z) with x, y, z in {-1, 0, A, B} (88 calls): 2,376
  transitions.  Each runs in its own child, from a state established with
  setresuid and confirmed by read-back; a state that cannot be established
  is recorded as such.
* gid model (``family="gid"``): the same over gids with the gid calls, made
  by a process whose uids are all A: with euid 0 (CAP_SETGID) every gid
  call would succeed and the automaton would say nothing.

JSON schema (``"schema": "uidprobe-model", "version": 1``)::

    {
      "schema": "uidprobe-model", "version": 1,
      "family": "uid" | "gid",
      "ids": {"A": <int>, "B": <int>},           # what the symbols meant here
      "fingerprint": {...},                      # as in the store
      "states": [{"state": ["0","A","B"], "established": true, "reason": null}, ...],
      "transitions": [
        {"from": ["0","0","0"], "call": "setuid", "args": ["A"],
         "ret": 0, "errno": null, "to": ["A","A","A"], "note": null}, ...
      ]
    }

Ids in ``from``/``to``/``args`` are symbols: "0", "A", "B", "-1" (args only),
"?" (saved id unreadable on this platform) or the decimal id for anything
else.  ``ret``/``to`` are null when the state could not be established or
the child did not finish; ``note`` then says why.
"""

from __future__ import annotations

from uidprobe.errors import ModelError
from uidprobe.model.data import DEFAULT_A, DEFAULT_B, Model, State, Transition, all_calls, all_states
from uidprobe.model.formats import SCHEMA, VERSION, diff, from_json, load, to_dot
from uidprobe.model.measure import build
from uidprobe.model.replay import derive_verdicts
from uidprobe.model.summary import regain_states, summary

__all__ = [
    "DEFAULT_A",
    "DEFAULT_B",
    "SCHEMA",
    "VERSION",
    "Model",
    "ModelError",
    "State",
    "Transition",
    "all_calls",
    "all_states",
    "build",
    "derive_verdicts",
    "diff",
    "from_json",
    "load",
    "regain_states",
    "summary",
    "to_dot",
]
