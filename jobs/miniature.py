"""The paper's comparisons in miniature on the embedded sets (Tables 1, 5 and 10).

Usage and options: `python jobs/miniature.py --help`; the logic is in
cgc_ray/experiments/miniature.py.
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.entry import main as entry_main
from cgc_ray.experiments.miniature import parse, run

main = partial(entry_main, parse, run)  # main(argv) -> exit code


if __name__ == "__main__":
    sys.exit(main())
