"""The paper's result tables from stored result rows (Ray-free).

A row is one finished trial: its tags (`method` "baseline" or "cgc",
`dataset`, `lam`, `tau`, `seed`, `shots`, `episode`, `labels`) and metrics
(`top1`, `ch` in percent; `ch` is None where the data set has no boxes).

A cell is mean ± sample standard deviation (ddof = 1) over the trials that
ran, two decimals. With one trial the spread is unknown and the cell reads
"m ± n/a"; with none, "—". A difference column is CGC − baseline, paired:
baseline and CGC trials that share everything but the method (the seed, or
the few-shot episode) are subtracted pairwise, and the cell is the mean ±
sample std of those differences.

Layouts: Table 10 (λ | Top-1 | CH), Tables 6/8 (data set | baseline | CGC |
Δ, top-1 and CH), Table 7 (shots × data set, baseline | CGC | Δ), Table 9
(semi-supervised: method | Top-1 | CH). Markdown for people; CSV with each
cell split into mean, std and n for programs.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field

from ..data.embedded import DATASETS as EMBEDDED_SETS

NA = "—"
DATASET_ORDER = ("cub", "aircraft", "cars", "flowers")


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float | None  # None: fewer than two values
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return NA
        spread = "n/a" if self.std is None else f"{self.std:.2f}"
        return f"{self.mean:.2f} ± {spread}"


def stat(values) -> Stat:
    """Mean ± sample std (ddof = 1) of the values that are numbers (None and NaN skipped)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return Stat(math.nan, None, 0)
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def paired_diff(rows: list[dict], metric: str, pair_by: tuple[str, ...]) -> Stat:
    """CGC − baseline of `metric` over the pairs that agree on `pair_by`."""
    by_method: dict[str, dict[tuple, float]] = {"baseline": {}, "cgc": {}}
    for r in rows:
        if r.get(metric) is not None and r.get("method") in by_method:
            by_method[r["method"]][tuple(r.get(k) for k in pair_by)] = r[metric]
    base, cgc = by_method["baseline"], by_method["cgc"]
    return stat(cgc[k] - base[k] for k in sorted(set(base) & set(cgc), key=str))


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list] = field(default_factory=list)
    note: str | None = None  # printed under the table: what its numbers can and cannot say


def smoke_note(configs: list[dict]) -> str | None:
    """What the table of one-epoch runs on the embedded set (the sweeps'
    no-argument preset) can and cannot say; None where a run trained longer
    or on other data. configs: the stored rows' training configs."""
    if not configs or any(c["dataset"] not in EMBEDDED_SETS or c["epochs"] > 1 for c in configs):
        return None
    c = configs[0]
    return (f"Smoke run: {c['epochs']} epoch at {c['image_size']} px on the generated {c['dataset']} set checks "
            "that the sweep, its trials and its tables work; its numbers are near chance and compare no "
            "method. The paper's comparisons on the embedded set, with models that learn: python "
            "jobs/miniature.py; on real data: the --datasets and --epochs of the README.")


def to_markdown(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(_text(c) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"> {table.note}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One column per plain cell, three (mean, std, n) per column holding a Stat."""
    stats = [any(isinstance(r[i], Stat) for r in table.rows) for i in range(len(table.header))]
    header = []
    for name, is_stat in zip(table.header, stats):
        header += [f"{name} mean", f"{name} std", f"{name} n"] if is_stat else [name]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        cells = []
        for cell, is_stat in zip(row, stats):
            if not is_stat:
                cells.append(_text(cell))
            elif isinstance(cell, Stat) and cell.n:
                cells += [f"{cell.mean:.4f}", "" if cell.std is None else f"{cell.std:.4f}", cell.n]
            else:
                cells += ["", "", 0]
        writer.writerow(cells)
    return out.getvalue()


def _text(cell) -> str:
    if cell is None:
        return NA
    if isinstance(cell, float):
        return f"{cell:g}"
    return str(cell)


def _values(rows, metric, **where):
    return [r.get(metric) for r in rows if all(r.get(k) == v for k, v in where.items())]


def _datasets(rows) -> list[str]:
    seen = sorted({r["dataset"] for r in rows})
    return [d for d in DATASET_ORDER if d in seen] + [d for d in seen if d not in DATASET_ORDER]


def lambda_table(rows: list[dict]) -> Table:
    """Table 10: one line per (λ, τ); a τ column only when the sweep has several."""
    points = sorted({(r["lam"], r["tau"]) for r in rows})
    several_tau = len({t for _, t in points}) > 1
    table = Table("Table 10: CGC weight λ (mean ± std over seeds)",
                  ["λ", *(["τ"] if several_tau else []), "Top-1", "CH"])
    for lam, tau in points:
        top1, ch = (stat(_values(rows, m, lam=lam, tau=tau)) for m in ("top1", "ch"))
        table.rows.append([lam, *([tau] if several_tau else []), top1, ch])
    return table


def finegrained_table(rows: list[dict]) -> Table:
    """Tables 6/8: baseline and CGC per data set, Δ paired by seed; CH where the set has boxes."""
    table = Table("Table 6: fine-grained fine-tuning (mean ± std over trials; Δ = CGC − baseline, paired by seed)",
                  ["Dataset", "Baseline top-1", "CGC top-1", "Δ top-1", "Baseline CH", "CGC CH", "Δ CH"])
    for ds in _datasets(rows):
        mine = [r for r in rows if r["dataset"] == ds]
        cells = []
        for metric in ("top1", "ch"):
            cells += [stat(_values(mine, metric, method="baseline")), stat(_values(mine, metric, method="cgc")),
                      paired_diff(mine, metric, ("seed",))]
        table.rows.append([ds, *cells])
    return table


def fewshot_table(rows: list[dict], metric: str = "top1") -> Table:
    """Table 7 (top-1) / 8 (CH): shots × data set; Δ paired by episode."""
    datasets = _datasets(rows)
    name = {"top1": "Table 7: few-shot top-1", "ch": "Table 8: few-shot CH"}.get(metric, metric)
    table = Table(f"{name} (mean ± std over episodes; Δ = CGC − baseline on the same episode)",
                  ["Shots", *[f"{ds} {m}" for ds in datasets for m in ("baseline", "CGC", "Δ")]])
    for shots in sorted({r["shots"] for r in rows}):
        cells = []
        for ds in datasets:
            mine = [r for r in rows if r["dataset"] == ds and r["shots"] == shots]
            cells += [stat(_values(mine, metric, method="baseline")), stat(_values(mine, metric, method="cgc")),
                      paired_diff(mine, metric, ("episode",))]
        table.rows.append([shots, *cells])
    return table


def semisup_table(rows: list[dict]) -> Table:
    """Table 9: CE on the labeled images vs. CE + CGC on all images; Δ paired by seed."""
    labels = sorted({str(r.get("labels")) for r in rows})
    table = Table(f"Table 9: semi-supervised, labels {', '.join(labels)} (mean ± std over seeds)",
                  ["Method", "Top-1", "CH"])
    for label, method in (("Baseline (CE on labeled)", "baseline"), ("CGC (+ CGC on unlabeled)", "cgc")):
        table.rows.append([label, *(stat(_values(rows, m, method=method)) for m in ("top1", "ch"))])
    table.rows.append(["Δ CGC − baseline", *(paired_diff(rows, m, ("seed",)) for m in ("top1", "ch"))])
    return table
