"""Floors for `packcache import`, run by the engines bench as separate processes.

`python -m tests.bench.save_floor HOST REF read` reads the `docker save` stream of REF through
packcache's daemon client and drops it: what any import pays before doing anything with the
bytes. `... digests` also computes what an import must learn of every layer, with the import's
own code: the blob digest and, through gunzip for a containerd store's blobs, the diffID
(BlobFiles.stage with write=False: the same worker thread, no file, no index). The distance
from there to `packcache import` is the cost of writing blobs and recording them.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

from packcache.archive.save_reader import SMALL_BLOB, ForwardReader
from packcache.digest import CHUNK
from packcache.store.blobs import BlobFiles
from packcache.transports.daemon import Daemon


def main() -> None:
    host, ref, mode = sys.argv[1:4]
    with Daemon(host).save([ref]) as stream:
        if mode == "read":
            while stream.read(CHUNK):
                pass
            return
        blobs = BlobFiles(Path("/nonexistent"))  # write=False never touches its directory
        with tarfile.open(fileobj=ForwardReader(stream), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue  # directories, and links to blobs already read
                source = tar.extractfile(member)
                assert source is not None
                if member.size > SMALL_BLOB:
                    blobs.stage(source, write=False)
                else:
                    source.read()


if __name__ == "__main__":
    main()
