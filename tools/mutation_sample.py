"""Mutation score of the core packages from a uniform random sample of their mutants (``make mutation SAMPLE=400``).

A full ``mutmut run`` over analysis, compress, export and train plants thousands of mutants and runs for hours on a
few cores. The score is a proportion, so a seeded uniform sample estimates it honestly: every mutant of the selected
modules is listed (mutmut's own generation step, so the names are the ones ``mutmut run`` takes), ``--sample`` of them
are drawn with ``random.Random(seed)``, mutmut runs exactly those, and the score is reported with its 95% Wilson
interval and the survivors by module.

What counts: killed and timed-out mutants are caught (mutmut's convention; also a mutant whose tests crashed,
"segfault"); survivors and mutants that no test reaches
("no tests") are missed; mutants that did not finish (an interrupted run, a crash of the runner) are left out and
counted separately -- mutmut runs the fastest mutants first, so an interrupted sample is biased toward them.

    python tools/mutation_sample.py --sample 400 --seed 0 [--jobs 1] [--modules deepslim.analysis ...]
    python tools/mutation_sample.py --sample 400 --seed 0 --batch 100   # 4 runs of 100 consecutive draws
    python tools/mutation_sample.py --sample 400 --seed 0 --report   # tally an earlier (or interrupted) run
    python tools/mutation_sample.py --sample 300 --seed 0 --first 101 --batch 100   # draws 101-300 only

Each mutant's tests run fastest first (mutmut stops at the first failure, so a killed mutant rarely reaches the slow
tests). ``--batch B`` runs the draws in consecutive slices of B (``mutants/sample_order.txt``) and reports after
each: the first k draws of a seed are its sample of k, so a run stopped between batches is a smaller uniform sample.
``--first F`` runs and tallies draws F..sample only: a fresh uniform sample when tests were written for the survivors
of the earlier draws (those no longer estimate anything).
``--skip-clean`` skips mutmut's clean run of the selected tests (most of the suite, ~15 min here), sound only right
after its stats pass ran them all unmutated on the same sources and tests.

Run it from the repository root (it reads ``[tool.mutmut]`` in pyproject.toml and works in ``mutants/``). It uses
mutmut's generation functions directly (checked against mutmut 3.8): ``mutmut run`` has no "list only" mode.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CAUGHT = {"killed", "timeout", "segfault", "caught by type check"}  # segfault: mutmut's name for a SIGKILL
MISSED = {"survived", "no tests"}
CORE = ("deepslim.analysis", "deepslim.compress", "deepslim.export", "deepslim.train")


def generate() -> None:
    """mutmut's generation step (what ``mutmut run`` does first): copy the sources into mutants/ and write every
    mutable file's mutants and its .meta file; unchanged files are kept from an earlier run."""
    from mutmut.__main__ import create_file_mutants
    from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, walk_source_files

    Path("mutants").mkdir(exist_ok=True)
    copy_src_dir()
    copy_also_copy_files()
    for path in walk_source_files():
        result = create_file_mutants(path)
        if result.error:
            raise result.error


def statuses() -> dict[str, str]:
    """Every generated mutant's name and mutmut status ("not checked" until it has run)."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files

    out: dict[str, str] = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        out.update({name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()})
    return out


def population(names: list[str], modules: list[str]) -> list[str]:
    """The mutants of ``modules`` (dotted module or package prefixes), sorted so that a seed always draws the same."""
    pool = sorted(n for n in names if any(n.startswith(m + ".") for m in modules))
    if not pool:
        raise SystemExit(f"no mutants in {' '.join(modules)}: check MODULES and [tool.mutmut] only_mutate")
    return pool


def draw_order(pool: list[str], size: int, seed: int) -> list[str]:
    """The seed's draws in the order drawn. Every prefix of a uniform sample drawn in order is itself a uniform
    sample, so a run in batches of consecutive draws that stops between batches has run a smaller uniform sample.
    (The first k are also exactly ``draw_order(pool, k, seed)`` only where ``random.sample`` takes the same path for
    both sizes: it draws from a set when the population exceeds 21 + 4^⌈log₄ 3k⌉ — for the core packages' ~25,000
    mutants, every sample up to 5,461 — and from a shuffled copy otherwise; across the two paths ``--report`` of a
    shorter sample would tally other mutants.)"""
    return random.Random(seed).sample(pool, min(size, len(pool)))


def draw(pool: list[str], size: int, seed: int) -> list[str]:
    """A uniform sample without replacement, reproducible by seed."""
    return sorted(draw_order(pool, size, seed))


def batches(order: list[str], *, first: int = 1, batch: int = 0) -> list[list[str]]:
    """Draws ``first``.. of ``order`` (1-based) in consecutive slices of ``batch`` (all in one when 0)."""
    if first < 1 or batch < 0:
        raise SystemExit("--first must be at least 1 and --batch at least 0")
    todo = order[first - 1 :]
    if order and not todo:  # an empty list would reach mutmut as "no names": every mutant, for hours
        raise SystemExit(f"--first {first} is past the {len(order)} draws")
    return [todo[i : i + batch] for i in range(0, len(todo), batch)] if batch else [todo]


def wilson(caught: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at small n and near 0 or 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = caught / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def module_of(name: str) -> str:
    """``deepslim.analysis.cost.x_fn__mutmut_3`` -> ``deepslim.analysis.cost`` (methods carry ``xǁClassǁ...``)."""
    return name.rsplit(".", 1)[0]


@dataclass(frozen=True, kw_only=True)
class Summary:
    seed: int
    modules: list[str]
    population: int
    sample: int
    statuses: dict[str, int]
    caught: int
    missed: int
    ci95: tuple[float, float]
    by_module: dict[str, dict[str, int]]
    survivors: dict[str, list[str]]

    @property
    def score(self) -> float | None:
        return self.caught / (self.caught + self.missed) if self.caught + self.missed else None

    def text(self) -> str:
        lines = [f"sampled {self.sample} of {self.population} mutants (seed {self.seed}); statuses {self.statuses}"]
        if self.score is None:
            lines.append("no sampled mutant finished")
        else:
            lines.append(f"estimated score {self.score:.1%} (95% Wilson interval {self.ci95[0]:.1%} - "
                         f"{self.ci95[1]:.1%}) over {self.caught + self.missed} finished mutants")  # fmt: skip
        for module, names in self.survivors.items():
            lines.append(f"  {module}: {len(names)} missed of {sum(self.by_module[module].values())} sampled")
            lines += [f"    {n}" for n in names]
        return "\n".join(lines)


def summarize(sample: list[str], status: dict[str, str], *, seed: int, modules: list[str], population: int) -> Summary:
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for n in sample:
        s = status.get(n, "not checked")
        by_module[module_of(n)][s] += 1
        if s in MISSED:
            survivors[module_of(n)].append(f"{n} ({s})")
    counts = Counter(status.get(n, "not checked") for n in sample)
    caught, missed = sum(counts[s] for s in CAUGHT), sum(counts[s] for s in MISSED)
    return Summary(seed=seed, modules=modules, population=population, sample=len(sample), statuses=dict(counts),
                   caught=caught, missed=missed, ci95=wilson(caught, caught + missed),
                   by_module={m: dict(c) for m, c in sorted(by_module.items())},
                   survivors=dict(sorted(survivors.items())))  # fmt: skip


def patch_mutmut(*, skip_clean: bool) -> None:
    """Two speed-ups of ``mutmut run`` (3.8): each mutant's tests run fastest first by the durations mutmut
    recorded (it runs them with ``-x``, so a killed mutant stops at its first failing test instead of after the slow
    ones a set happened to put first); with ``skip_clean``, mutmut's clean run of every selected test is skipped --
    only sound right after its stats pass ran them all unmutated, on the same sources and tests."""
    from mutmut.state import state
    from mutmut.workers import isolation

    for runner in (isolation.ForkServerRunner, isolation.ForkRunner):
        submit = runner.submit

        def fastest_first(self: isolation.MutantRunner, name: str, tests: list[str], cpu_limit: int, estimated: float,
                          _submit: Any = submit) -> None:  # fmt: skip
            durations = state().duration_by_test
            return _submit(self, name, sorted(tests, key=lambda t: (durations.get(t, 0.0), t)), cpu_limit, estimated)

        runner.submit = fastest_first  # type: ignore[method-assign,assignment]
        if skip_clean:
            runner.run_clean_tests = lambda self, tests: 0  # type: ignore[method-assign]


def run_mutmut(names: list[str], *, jobs: int, skip_clean: bool) -> None:
    """``mutmut run --max-children JOBS NAMES`` in a child process, patched as :func:`patch_mutmut` says."""
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import mutation_sample as m; "
            "m.patch_mutmut(skip_clean=sys.argv.pop(1) == '1'); from mutmut.__main__ import cli; cli()")  # fmt: skip
    argv = [sys.executable, "-c", code, str(Path(__file__).parent), "1" if skip_clean else "0", "run",
            "--max-children", str(jobs), *names]  # fmt: skip
    subprocess.run(argv, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, required=True, help="how many mutants to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="mutmut --max-children")
    parser.add_argument("--modules", nargs="+", default=list(CORE), help="dotted module or package prefixes")
    parser.add_argument("--report", action="store_true", help="only tally the sample's results from mutants/")
    parser.add_argument("--batch", type=int, default=0,
                        help="run the sample in batches of this many consecutive draws (an unbiased stopping point)")
    parser.add_argument("--first", type=int, default=1,
                        help="run and tally draws FIRST..SAMPLE only (1-based; the earlier draws are left out)")
    parser.add_argument("--skip-clean", action="store_true",
                        help="skip mutmut's clean run (only right after its stats pass, on unchanged sources)")
    args = parser.parse_args()
    if args.sample < 1 or args.first > args.sample:
        raise SystemExit("--sample must be at least 1 and --first at most --sample")
    batches([], first=args.first, batch=args.batch)  # refuses a bad --first or --batch before the slow generation
    if not args.report:
        generate()
    status = statuses()
    modules = [m.removesuffix(".*").removesuffix("*").rstrip(".") for m in args.modules]
    pool = population(list(status), modules)
    order = draw_order(pool, args.sample, args.seed)
    sample = sorted(order[args.first - 1 :])
    Path("mutants/sample.txt").write_text("\n".join(sample) + "\n")
    Path("mutants/sample_order.txt").write_text("\n".join(order) + "\n")  # draw order: batches are its slices
    todo = batches(order, first=args.first, batch=args.batch)
    for batch in [] if args.report else todo:
        run_mutmut(batch, jobs=args.jobs, skip_clean=args.skip_clean)
        report(sample, statuses(), seed=args.seed, modules=modules, population=len(pool))
    if args.report:
        report(sample, status, seed=args.seed, modules=modules, population=len(pool))


def report(sample: list[str], status: dict[str, str], *, seed: int, modules: list[str], population: int) -> None:
    summary = summarize(sample, status, seed=seed, modules=modules, population=population)
    Path("mutants/sample_summary.json").write_text(json.dumps({**asdict(summary), "score": summary.score}, indent=1))
    print(summary.text(), flush=True)


if __name__ == "__main__":
    main()
