"""Table 6: fine-tuning on fine-grained sets, baseline vs. CGC, top-1 and CH.

Usage and options: `python jobs/finegrained.py --help`; the logic is in
cgc_ray/experiments/finegrained.py.
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.entry import main as entry_main
from cgc_ray.experiments.finegrained import parse, run

main = partial(entry_main, parse, run)  # main(argv) -> exit code


if __name__ == "__main__":
    sys.exit(main())
