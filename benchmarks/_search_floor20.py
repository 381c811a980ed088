"""The node table near the floor, session 20: ``_search_floor17.py``'s run (the session-17 node table, its timer
calls logged, the calibration's canary notes applied before the fit) with each policy measured robustly — every
chunk of 5 timed a second time after the first pass, the chunks and their policies in reverse order, each in a
fresh timer process; a chunk where some policy's two ratios to its chunk's dense disagree by more than 6 % timed a
third time; each policy's truth the lower of its two ratios, or the median of three
(``_search_floor15.second_pass``). Sessions 17–18: 7 of 11 misses of two runs were one policy reading 16–34 % slow
in its single timing beside a steady dense. Each estimator is fitted and judged on both truths, so the old
single-reading score (``knee_<variant>``, the first pass's re-timed chunks) stays beside the new one
(``knee_<variant>__agreed``); ``noise_band`` holds the spread between the two passes::

    OMP_NUM_THREADS=1 python benchmarks/_search_floor20.py OUT.json CACHE_DIR [--models DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_floor17 import TRUTHS, main  # noqa: E402

AGREED = {**TRUTHS, "agreed": "measured_agreed_ms"}

if __name__ == "__main__":
    main(passes=2, truths=AGREED)
