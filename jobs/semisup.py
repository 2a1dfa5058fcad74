"""Table 9: semi-supervised learning, 1% of the labels; CGC also on the unlabeled rest.

Usage and options: `python jobs/semisup.py --help`; the logic is in
cgc_ray/experiments/semisup.py.
"""

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `ray job submit --working-dir .` without install

from cgc_ray.entry import main as entry_main
from cgc_ray.experiments.semisup import parse, run

main = partial(entry_main, parse, run)  # main(argv) -> exit code


if __name__ == "__main__":
    sys.exit(main())
