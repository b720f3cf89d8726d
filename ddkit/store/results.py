"""Result cards carried inside a file (`/results/<name>`), for both file kinds.

`ddkit evaluate` writes the card of each protocol into the evaluated file, so a shared file carries
its own evaluation history. Cards live outside the content hash: adding one does not change the
identity of the data. A card is a JSON attribute `card` on the group `/results/<name>`.
"""

from __future__ import annotations

import os

from ddkit.errors import IncompatibleError, InvalidInput
from ddkit.fileio import atomic_output, folder_lock
from ddkit.store.h5io import building, open_store, reading
from ddkit.store.schema import DISTILLED_FORMAT, SELECTION_FORMAT, attr_text, dump_json, load_json

STORE_FORMATS = (DISTILLED_FORMAT, SELECTION_FORMAT)


def read_results(path: str | os.PathLike) -> dict[str, dict]:
    """The result cards of a `.ddk.h5` or `.sel.h5` file, by name (protocol)."""
    h5, _ = open_store(path, STORE_FORMATS)
    with h5, reading(path):
        group = h5.get("results", {})
        cards = {name: load_json(group[name].attrs["card"], f"result card {name!r}") for name in group}
        for name, card in cards.items():
            if not isinstance(card, dict):
                raise ValueError(f"result card {name!r} is a JSON {type(card).__name__}, not an object")
        return cards


def add_result(path: str | os.PathLike, name: str, card: dict) -> None:
    """Store `card` as `/results/<name>` (replacing a card of that name), atomically.

    The file is copied next to itself, the card written into the copy, and the copy renamed over
    the original: a crash leaves the old file intact. A card that names a `content_sha256` must
    name this file's. Concurrent calls (several `ddkit evaluate` runs on one file) take a lock on
    the file's folder in turn, so every card is kept.
    """
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise InvalidInput(f"result name {name!r} is not a valid name", "use the protocol name, without '/'")
    if not isinstance(card, dict):
        raise InvalidInput(f"a result card must be a dict, got {type(card).__name__}")
    text = dump_json(card, f"result card {name!r}")
    with folder_lock(path):  # read, add, replace: one writer at a time, so no card is lost
        h5, _ = open_store(path, STORE_FORMATS)
        with h5, reading(path):
            recorded = attr_text(h5.attrs["content_sha256"])
        if card.get("content_sha256", recorded) != recorded:
            raise IncompatibleError(
                f"the card is for content {str(card['content_sha256'])[:12]}…, but {path} holds content {recorded[:12]}…",
                "write the card into the file that was evaluated",
            )
        with open(path, "rb") as fh:
            current = fh.read()
        with building(current) as (h5, image):
            results = h5.require_group("results")
            if name in results:
                del results[name]
            results.create_group(name).attrs["card"] = text
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_bytes(image[0])


def derived_changes(protocol_id: str) -> str | None:
    """What a derived protocol changed (`hard-cpu[epochs=0,steps=50]@1` -> "epochs=0,steps=50"), None for a
    registered one. A card under a derived protocol comes from a shortened or altered run (`evaluate
    --steps`): it is shown apart and never ranked beside the cards of the protocol itself."""
    name = str(protocol_id).rpartition("@")[0] or str(protocol_id)
    return name[name.index("[") + 1 : -1] if "[" in name and name.endswith("]") else None


def _arm(card: dict, key: str) -> tuple:
    arm = card.get(key)
    return (arm.get("mean"), arm.get("std")) if isinstance(arm, dict) else (None, None)


def summarize_card(name: str, card: dict) -> dict:
    """The numbers `ddkit info` shows for the card stored as `name`: mean ± std, random baseline, gain.

    Reads the layout of `ddkit.evaluate`'s ResultCard: `result` and `random_baseline` arms with
    `mean`/`std` (final-epoch test accuracy over seeds) and `gain_over_random` (computed from the
    two means when absent). Missing numbers are None.
    """
    mean, std = _arm(card, "result")
    random_mean, random_std = _arm(card, "random_baseline")
    gain = card.get("gain_over_random")
    if gain is None and isinstance(mean, (int, float)) and isinstance(random_mean, (int, float)):
        gain = mean - random_mean
    ranking = card.get("ranking") if isinstance(card.get("ranking"), dict) else {}
    scores = {k: _arm(ranking, k)[0] for k in ("hlr", "ior", "lrs")}  # DD-Ranking's, when the card has them
    return {"protocol": name, "mean": mean, "std": std, "random_mean": random_mean, "random_std": random_std, "gain": gain,
            **scores, "derived": derived_changes(name)}
