"""The registry of `ddkit` verbs: each name maps to the module and function that define it, and
a one-line summary for `ddkit --help`.

A verb's module is imported only when that verb runs (or its own `--help` is asked for), so
`ddkit --help` imports none of them; a test keeps each summary equal to its verb's own help line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    module: str  # under ddkit.cli
    attr: str  # the click command or group in that module
    summary: str  # the first line of its help, shown by `ddkit --help`


VERBS: dict[str, Verb] = {
    "active-learn": Verb("evaluation", "active_learn_cmd",
                         "Run the active-learning loop (oracle = the pool's labels) for each method, with and without KD;"),
    "catalog": Verb("sharing", "catalog", "A team's index of distilled files: scan folders or URLs, list and filter, fetch verified."),
    "contamination": Verb("contamination", "contamination",
                          "Copy detection against test sets: learn and calibrate a dataset's copy descriptor."),
    "describe": Verb("listing", "describe_cmd", "Everything about one registered NAME: options (type, default, meaning), needs, protocols."),
    "evaluate": Verb("evaluation", "evaluate", "Train students on TRAIN_SET (.ddk.h5, .sel.h5, or random:DATASET:IPC) and report accuracy."),
    "experts": Verb("teachers", "experts", "Expert trajectories for trajectory matching (MTT), in one sealed .experts.h5 file."),
    "export": Verb("sharing", "export_cmd", "Write the distilled file PATH (a path or URL) as a folder --out OUT in another format."),
    "import": Verb("sharing", "import_cmd", "Import a released distilled set (SOURCE: a file, folder or URL) as a .ddk.h5 file (--out)."),
    "info": Verb("files", "info", "Budget in bytes, provenance and results of a ddkit file (.ddk.h5, .sel.h5, .pool.h5, teacher, experts)."),
    "keys": Verb("sharing", "keys", "Ed25519 key pairs for `ddkit sign`, and the trusted-keys file that `--require-signature` reads."),
    "list": Verb("listing", "list_cmd", "Print every registry (or one) with a one-line summary per entry."),
    "merge": Verb("sets", "merge", "Merge distilled files of the same dataset, normalization, teachers and method (lineage recorded)."),
    "pack": Verb("sharing", "pack_cmd", "Write PATH, every teacher it references (matched by sha256) and a README into the folder --out."),
    "pool": Verb("pools", "pool", "Unlabeled image pools (.pool.h5) for selectors such as KD³: build, dedup, score, kcenter."),
    "quickstart": Verb("evaluation", "quickstart",
                       "The main job end to end on the embedded dataset: teacher → distilled file → info → show → evaluate."),
    "select": Verb("sets", "select", "Select BUDGET samples from a pool into a .sel.h5 file (with --labeled: one active-learning round)."),
    "show": Verb("files", "show", "Render a per-class grid of a distilled file's instances (or its compensators) to a PNG."),
    "sign": Verb("sharing", "sign_cmd",
                 "Sign a .ddk.h5 / .sel.h5 file with your Ed25519 key, so a team can require it (--require-signature)."),
    "synthesize": Verb("sets", "synthesize", "Distill DATASET into a compact .ddk.h5 training set."),
    "teacher": Verb("teachers", "teacher", "Train and evaluate teacher networks (safetensors files with a JSON header)."),
    "validate": Verb("files", "validate", "Recompute the content hash and check shapes, dtypes, class coverage and label space"),
}
