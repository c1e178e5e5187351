"""Re-ranking's scattered reads from the vector file, read one after another or announced first.

An ivfpq search re-ranks about 1,000 candidates by reading their exact rows (index_service.vector_file).
When the file is larger than the page cache those reads come from disk. This times one read of `--rows`
random rows through VectorFile.read, with and without announcing them (POSIX_FADV_WILLNEED), from a cold
page cache (dropped before each read: needs root; skipped otherwise) and from a warm one. The two ways
alternate, and each figure is the median of `--repeats` reads.

The file is `--file-rows` rows of 768 floats (4 GB by default) in a temporary folder under `--dir`. What
this does not cover: a cache that is partly warm (the service decides by timing its own reads, so it takes
whichever way its reads call for), other processes' reads competing for the same disk.

    python bench/cold_reads.py [--file-rows 1300000] [--rows 1000] [--repeats 7] [--dir /tmp]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from index_service.vector_file import VectorFile  # noqa: E402

DIMENSION = 768
BLOCK = 16384


def drop_page_cache() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def timed_read(vectors: VectorFile, rows: np.ndarray, announce: bool, cold: bool) -> float:
    if cold:
        drop_page_cache()
        time.sleep(0.2)
    vectors.announce_reads = announce  # the mode the read starts in (it then judges its own time)
    started = time.perf_counter()
    vectors.read(rows)
    return 1000 * (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file-rows", type=int, default=1_300_000)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        vectors = VectorFile(Path(folder) / "vectors", DIMENSION, create=True)
        vectors.reserve(args.file_rows)
        block = rng.standard_normal((BLOCK, DIMENSION), dtype=np.float32)
        for first in range(0, args.file_rows, BLOCK):
            count = min(BLOCK, args.file_rows - first)
            vectors.write(np.arange(first, first + count), block[:count])
        vectors.sync(1)
        can_drop = drop_page_cache()
        figures = {}
        for cold in ([True, False] if can_drop else [False]):
            times = {"plain": [], "announced": []}
            for repeat in range(args.repeats):
                rows = rng.choice(args.file_rows, args.rows, replace=False)
                if not cold:
                    vectors.read(rows)  # into the cache
                order = ["plain", "announced"] if repeat % 2 else ["announced", "plain"]
                for way in order:
                    times[way].append(timed_read(vectors, rows, way == "announced", cold))
            cache = "cold" if cold else "warm"
            for way, values in times.items():
                figures[f"{cache}_{way}_ms_per_{args.rows}_rows"] = statistics.median(values)
            figures[f"{cache}_ratio_plain_over_announced"] = statistics.median(
                p / a for p, a in zip(times["plain"], times["announced"]))
        vectors.close()
    print("file:", f"{args.file_rows} rows x {DIMENSION} float32 ({args.file_rows * DIMENSION * 4 / 2**30:.1f} GiB)")
    if not can_drop:
        print("cold page cache: not measured (dropping the page cache needs root)")
    print("\nsummary")
    for key, value in figures.items():
        print(f"{key}: {value:.4g}")


if __name__ == "__main__":
    main()
