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
"""

from __future__ import annotations

import json
import os
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

    The temporary file is created 0600 and renamed, so the file stays readable by its owner only.
    """
    path = membership_path(checkpoint)
    atomic_write_text(path, json.dumps({"format": FORMAT, "note": NOTE, **record}, indent=1, sort_keys=True))
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
