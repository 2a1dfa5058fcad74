import os
import sys

# The authors' reference step (tests/authors_cgc.py) is imported by name.
sys.path.insert(0, os.path.dirname(__file__))
