"""Experiment sweeps of the CGC paper (Tables 6-10): subsets, tables, the Tune runner."""
