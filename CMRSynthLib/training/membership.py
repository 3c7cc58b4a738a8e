"""Who a DP model was trained on, kept OUT of its shareable checkpoint folder.

A DP guarantee covers what DP-SGD released (the weights and the ledger) and nothing else. So the folder of a
DP checkpoint holds nothing computed from the private data outside the mechanism: no patient ids, no data
fingerprint, no loss curve, no intensity statistics, no vendor list or stack depth of the patients. The one count
it keeps, the number of training patients (in the ledger's sampling rate, which ε needs), is declared public (README,
"Privacy, honestly"). What the hospital still needs goes to ONE file beside the folder,
``<folder>.PRIVATE-membership.json`` (mode 0600, written atomically): the patient lists (the audit needs members
and held-out patients; a DP fine-tune of this model on any of its patients must compose the budgets), the data
fingerprint and the loss curve (a resumed run continues it). Loading a model never reads it; sharing the folder
shares none of it. Copying only the folder loses it: then give the audit ``--members`` and
``--holdout``, and a DP fine-tune of the copy composes its budget with the new one (the safe side).

Cards of runs without DP, and DP cards written before this file existed, hold the lists inline;
:func:`patient_splits` reads either.

Lineage. A fine-tune descends from its ``--init``, which may descend from another model, and so on. Every card
names its ancestors, nearest first, in ``lineage``: each one's ``model_id`` and its privacy ledger (null: trained
without DP). Who each ancestor saw is private like the members: it goes to the membership file (``lineage``, a
list parallel to the card's), except that a card without DP, which lists its own members anyway, also lists
those of its ancestors trained without DP. :func:`lineage` reads the chain back, so that a DP run can refuse
patients any non-DP ancestor saw and compose the spend of every DP ancestor on its patients, and the privacy
filter can screen for every patient the model descends from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from CMRSynthLib.errors import InputError
from CMRSynthLib.files import atomic_write_text

SPLITS = ("members", "validation", "holdout", "unused")  # the patient lists of a training run
SUFFIX = ".PRIVATE-membership.json"
FORMAT = "cmrsynth-membership"
NOTE = ("Patient ids and statistics of the PRIVATE training data of the model in the folder beside this file. "
        "Keep it inside the hospital; never share it with the model.")


def membership_path(checkpoint: str | os.PathLike) -> Path:
    """``<checkpoint folder>.PRIVATE-membership.json``, beside the folder (not in it)."""
    folder = Path(os.path.abspath(checkpoint))
    return folder.with_name(folder.name + SUFFIX)


def write_membership(checkpoint: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` (splits, ``data``, ``loss_curve``, ...) as the checkpoint's membership file, atomically.

    Written owner-only (0600) whatever the umask.
    """
    path = membership_path(checkpoint)
    atomic_write_text(path, json.dumps({"format": FORMAT, "note": NOTE, **record}, indent=1, sort_keys=True),
                      private=True)
    return path


def read_membership(checkpoint: str | os.PathLike) -> dict:
    """The checkpoint's membership record; ``{}`` when it has none (a shared copy, or a run without DP)."""
    path = membership_path(checkpoint)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not a readable membership file ({exc})", path=path) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise InputError(f"is not a CMRSynth membership file (format {FORMAT!r} expected)", path=path)
    return record


def patient_splits(card: dict, checkpoint: str | os.PathLike) -> dict[str, list[str]]:
    """The run's patient lists (:data:`SPLITS`) from the card when it holds them, else from the membership file;
    empty lists when neither does."""
    source = card if any(name in card for name in SPLITS) else read_membership(checkpoint)
    return {name: [str(p) for p in source.get(name) or []] for name in SPLITS}


def known_splits(card: dict, checkpoint: str | os.PathLike) -> dict[str, list[str]]:
    """:func:`patient_splits`, refused when they name no training patient: a DP model's folder copied without
    its membership file (what needs the members cannot go on; the audit takes ``--members`` instead)."""
    splits = patient_splits(card, checkpoint)
    if not splits["members"]:
        raise InputError(f"neither the card nor {membership_path(checkpoint).name} beside the folder lists the "
                         "model's training patients (a DP model copied without its membership file?)",
                         path=checkpoint)
    return splits


@dataclass(frozen=True)
class Ancestor:
    """One model of a lineage. ``privacy``: its ledger dict (None: trained without DP, or not known);
    ``members``: the patients its own run trained on (None: not known here, e.g. a copy without its
    membership file, or a card written before lineage records)."""

    model_id: str
    privacy: dict | None
    members: frozenset[str] | None


def lineage(card: dict, checkpoint: str | os.PathLike) -> list[Ancestor]:
    """The model itself, then every model it was fine-tuned from, nearest first.

    A card written before lineage records that names an ``--init`` (``training.init``) gives that init as an
    ancestor of which nothing is known: a DP run refuses it rather than guess.
    """
    private = read_membership(checkpoint)
    own = patient_splits(card, checkpoint)["members"]
    # a card without DP lists its members inline (an empty list: a model that names none, taken as public)
    chain = [Ancestor(str(card.get("model_id")), card.get("privacy"),
                      frozenset(own) if own or not card.get("privacy") else None)]
    if "lineage" not in card:
        init = (card.get("training") or {}).get("init")
        return chain + ([Ancestor(str(init), None, None)] if init else [])
    seen = private.get("lineage") or []
    for position, entry in enumerate(card["lineage"]):
        members = entry.get("members")
        if members is None and position < len(seen) and seen[position].get("model_id") == entry["model_id"]:
            members = seen[position].get("members")
        chain.append(Ancestor(str(entry["model_id"]), entry.get("privacy"),
                              None if members is None else frozenset(members)))
    return chain


def lineage_patients(card: dict, checkpoint: str | os.PathLike) -> frozenset[str] | None:
    """Every patient the model or a model of its lineage trained on; None when some model's patients are not
    known here (then any patient may have been seen)."""
    chain = lineage(card, checkpoint)
    if any(ancestor.members is None for ancestor in chain):
        return None
    return frozenset().union(*(ancestor.members for ancestor in chain))


def descendant_lineage(init: list[Ancestor], *, dp: bool) -> tuple[list[dict], list[dict]]:
    """What a model fine-tuned from ``init`` (:func:`lineage` of its ``--init``) records:
    ``(the card's lineage, the membership file's)``. Members go inline only for ancestors without DP in a card
    without DP (``dp`` False), which lists patient ids anyway; all of them go to the private record."""
    public = [{"model_id": a.model_id, "privacy": a.privacy,
               **({"members": sorted(a.members)} if not dp and a.privacy is None and a.members is not None else {})}
              for a in init]
    private = [{"model_id": a.model_id, "members": None if a.members is None else sorted(a.members)}
               for a in init]
    return public, private
