"""`write_distilled`: validate a `DistilledSet`, then store it atomically as a `.ddk.h5` file."""

from __future__ import annotations

import os

from ddkit.store.distilled import DistilledSet
from ddkit.store.h5io import image_chunks, write_store
from ddkit.store.schema import DISTILLED_FORMAT, encode_attrs


def write_distilled(path: str | os.PathLike, dset: DistilledSet, overwrite: bool = False,
                    expect_content: str | None = None) -> str:
    """Write `dset` to `path` and return its content_sha256 (with `expect_content`, only if it is that:
    an import that must reproduce a signed set exactly writes nothing otherwise).

    Everything is checked and encoded before a file is created (bad pixels, labels, payload rows,
    composite members, budget, a config that is not JSON); the file appears under `path` only when
    complete. `/images` is chunked by at most one class's worth of images, so a class reads fast.
    """
    dset.check()
    arrays, group_attrs = dset.layout()
    header_attrs = encode_attrs(dset.header(arrays))
    images = arrays["images"]
    rows_per_class = max(1, len(images) // dset.num_classes)
    chunks = {"images": image_chunks(images.shape, images.itemsize, rows_per_class)}
    return write_store(path, DISTILLED_FORMAT, arrays, header_attrs, group_attrs, chunks, overwrite, schema=dset.schema,
                       expect_content=expect_content)
