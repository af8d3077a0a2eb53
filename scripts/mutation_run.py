"""A repeatable mutation run over the modules that decide results (docs/mutation.md).

Mutants are generated from each module's AST: comparison swaps (< <=, == !=, in / not in, is / is not),
arithmetic swaps (+ -, * /, ** *, | &), and/or, a dropped `not` or unary minus, min <-> max
(argmin/argmax, minimum/maximum, any/all), a number + 1 or a flipped boolean, and a dropped statement
(replaced by `pass`). Docstrings, f-strings and annotations are never mutated. A fixed-seed sample
of them runs, one at a time, against only the test files MODULE_TESTS maps to its module, in a
private copy of the checkout with one torch thread and a per-mutant timeout. A mutant is killed when
a test fails (or the run exceeds the timeout), survives when the tests pass.

    .venv/bin/python scripts/mutation_run.py --sample 100 --seed 0          # the sampled run
    .venv/bin/python scripts/mutation_run.py --named                        # the issue's mutant classes
    .venv/bin/python scripts/mutation_run.py --list                         # count mutants per module
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the test files that should kill its mutants (fast ones first: pytest stops at the first failure).
MODULE_TESTS = {
    "diffuser/evaluation/evaluator.py": ["tests/test_evaluation.py", "tests/test_benchmarks.py"],
    "diffuser/runtime/seeding.py": ["tests/test_evaluation.py", "tests/test_online_collection.py"],
    "diffuser/evaluation/policy.py": ["tests/test_policy_runner.py", "tests/test_benchmarks.py"],
    "diffuser/training/checkpoints.py": ["tests/test_checkpoint.py", "tests/test_atomic_save.py"],
    "diffuser/training/trainer.py": ["tests/test_ema.py", "tests/test_trainer_rules.py", "tests/test_training.py"],
    "diffuser/training/online/update.py": ["tests/test_ppo_clip.py", "tests/test_online_training.py"],
    "diffuser/training/online/rollout.py": ["tests/test_online_collection.py", "tests/test_online_training.py"],
    "diffuser/training/online/trainer.py": ["tests/test_online_collection.py", "tests/test_online_training.py"],
    "diffuser/models/critics.py": ["tests/test_critics.py", "tests/test_diffusion_rl.py"],
    "diffuser/envs/scores.py": ["tests/test_evaluation.py", "tests/test_envs.py"],
    "diffuser/datasets/episodes.py": ["tests/test_dataset_validation.py", "tests/test_d4rl_format.py"],
    "diffuser/datasets/normalization.py": ["tests/test_normalization.py"],
    "diffuser/datasets/sequence.py": ["tests/test_sequence_dataset.py"],
    "diffuser/datasets/d4rl.py": ["tests/test_d4rl_format.py"],
    "diffuser/reporting/aggregate.py": ["tests/test_reporting.py"],
    "diffuser/reporting/stats.py": ["tests/test_statistics.py"],
    "diffuser/training/loggers.py": ["tests/test_loggers.py"],
    "diffuser/training/metrics.py": ["tests/test_sync_free_step.py", "tests/test_trainer_rules.py"],
    "diffuser/training/online/mixing.py": ["tests/test_online_baselines.py", "tests/test_online_training.py"],
    "diffuser/training/online/replay.py": ["tests/test_online_baselines.py"],
    "diffuser/training/online/base.py": ["tests/test_online_baselines.py", "tests/test_online_training.py"],
    "diffuser/models/iql.py": ["tests/test_baselines.py", "tests/test_online_baselines.py"],
    "diffuser/models/fql.py": ["tests/test_baselines.py", "tests/test_online_baselines.py"],
    "diffuser/models/diffusion_policy.py": ["tests/test_baselines.py"],
    "diffuser/models/ensembles.py": ["tests/test_critics.py", "tests/test_baselines.py"],
}

COMPARE_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
BINOP_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv, ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr,
}
NAME_SWAPS = {
    "min": "max", "max": "min", "argmin": "argmax", "argmax": "argmin", "minimum": "maximum",
    "maximum": "minimum", "any": "all", "all": "any",
}
AUGASSIGN_SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.BitOr: ast.BitAnd,
                   ast.BitAnd: ast.BitOr}
DROPPABLE = (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Raise)


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    kind: str
    description: str
    source: str  # the whole mutated module

    @property
    def name(self) -> str:
        return f"{self.module}:{self.line} {self.kind}: {self.description}"


class _Source:
    """A module's text with splicing by AST positions (lines 1-based, columns in UTF-8 bytes)."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines(keepends=True)

    def _offset(self, line: int, col: int) -> int:
        return sum(len(x) for x in self.lines[: line - 1]) + len(self.lines[line - 1].encode()[:col].decode())

    def segment(self, node) -> str:
        return self.text[self._offset(node.lineno, node.col_offset):self._offset(node.end_lineno, node.end_col_offset)]

    def replace(self, node, new: str) -> str:
        start, end = self._offset(node.lineno, node.col_offset), self._offset(node.end_lineno, node.end_col_offset)
        return self.text[:start] + new + self.text[end:]

    def alone_on_its_lines(self, node) -> bool:
        before = self.lines[node.lineno - 1].encode()[: node.col_offset].decode()
        after = self.lines[node.end_lineno - 1].encode()[node.end_col_offset:].decode().strip()
        return not before.strip() and (not after or after.startswith("#"))


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, f-strings and annotations, with everything inside them."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                roots.append(first)
        if isinstance(node, ast.JoinedStr):
            roots.append(node)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            roots += [a.annotation for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs,
                                             node.args.vararg, node.args.kwarg) if a is not None and a.annotation]
            roots += [node.returns] if node.returns else []
        if isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(n) for root in roots for n in ast.walk(root)}


def _expression_mutants(node: ast.AST, source: _Source) -> list[tuple[str, str, str]]:
    """(kind, description, replacement text of `node`) for one expression (or augmented assignment) node."""
    out = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                ops = list(node.ops)
                ops[i] = COMPARE_SWAPS[type(op)]()
                new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
                out.append(("compare", f"{type(op).__name__} -> {type(ops[i]).__name__}", f"({ast.unparse(new)})"))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
        new = ast.BinOp(left=node.left, op=BINOP_SWAPS[type(node.op)](), right=node.right)
        out.append(("arithmetic", f"{type(node.op).__name__} -> {type(new.op).__name__}", f"({ast.unparse(new)})"))
    elif isinstance(node, ast.AugAssign) and type(node.op) in AUGASSIGN_SWAPS:
        new = ast.AugAssign(target=node.target, op=AUGASSIGN_SWAPS[type(node.op)](), value=node.value)
        out.append(("arithmetic", f"{type(node.op).__name__}= -> {type(new.op).__name__}=", ast.unparse(new)))
    elif isinstance(node, ast.BoolOp):
        new = ast.BoolOp(op=ast.Or() if isinstance(node.op, ast.And) else ast.And(), values=node.values)
        out.append(("boolean", f"{type(node.op).__name__} -> {type(new.op).__name__}", f"({ast.unparse(new)})"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
        out.append(("unary", f"drop {type(node.op).__name__}", f"({source.segment(node.operand)})"))
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if name in NAME_SWAPS:
            new_func = (ast.Name(id=NAME_SWAPS[name]) if isinstance(func, ast.Name)
                        else ast.Attribute(value=func.value, attr=NAME_SWAPS[name]))
            new = ast.Call(func=new_func, args=node.args, keywords=node.keywords)
            out.append(("min-max", f"{name} -> {NAME_SWAPS[name]}", f"({ast.unparse(new)})"))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str):
        if isinstance(node.value, bool):
            out.append(("constant", f"{node.value} -> {not node.value}", str(not node.value)))
        elif isinstance(node.value, (int, float)):
            out.append(("constant", f"{node.value!r} -> {node.value + 1!r}", f"({node.value + 1!r})"))
    return out


def generate_mutants(module: str, root: Path = ROOT) -> list[Mutant]:
    """Every mutant of `module` (a path relative to `root`) that still compiles, in source order."""
    text = (root / module).read_text()
    tree, source = ast.parse(text), _Source(text)
    skipped = _skipped_nodes(tree)
    mutants = []
    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        candidates = [(kind, desc, source.replace(node, new)) for kind, desc, new in _expression_mutants(node, source)]
        if isinstance(node, DROPPABLE) and source.alone_on_its_lines(node):
            first = source.segment(node).splitlines()[0].strip()
            candidates.append(("statement", f"drop `{first[:60]}`", source.replace(node, "pass")))
        for kind, description, mutated in candidates:
            try:
                compile(mutated, module, "exec")
            except SyntaxError:
                continue
            mutants.append(Mutant(module, node.lineno, kind, description, mutated))
    return sorted(mutants, key=lambda m: (m.line, m.kind, m.description))


def sample_mutants(mutants: list[Mutant], size: int, seed: int) -> list[Mutant]:
    chosen = random.Random(seed).sample(range(len(mutants)), min(size, len(mutants)))
    return [mutants[i] for i in sorted(chosen)]


# ---------------------------------------------------------------------------------------------- running
def make_workspace(source_root: Path) -> Path:
    """A private copy of the checkout's files (tracked and untracked, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source_root, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    workspace = Path(tempfile.mkdtemp(prefix="mutation-"))
    for rel in filter(None, listed):
        src = source_root / rel
        if src.is_file():
            (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workspace / rel)
    return workspace


def run_tests(workspace: Path, tests: list[str], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, the first failing test) for `tests` in `workspace`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=str(workspace), MPLBACKEND="Agg", DVC_NO_ANALYTICS="1")
    basetemp = workspace / ".pytest-tmp"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow and not slurm",
           f"--basetemp={basetemp}", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    seconds = time.perf_counter() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    last_lines = proc.stdout.strip().splitlines()[-1:]
    # pytest exit codes: 0 passed, 1 a test failed, 2 interrupted (e.g. a collection error); others are errors
    outcome = {0: "passed", 1: "failed", 2: "failed"}.get(proc.returncode, "error")
    return outcome, seconds, failed[0] if failed else (last_lines[0] if last_lines else f"exit code {proc.returncode}")


def existing_tests(workspace: Path, module: str) -> list[str]:
    return [t for t in MODULE_TESTS[module] if (workspace / t).is_file()]


def run_mutants(mutants: list[Mutant], source_root: Path, timeout_factor: float, min_timeout: float,
                log) -> list[dict]:
    workspace = make_workspace(source_root)
    results = []
    try:
        baselines = {}
        for module in sorted({m.module for m in mutants}):
            tests = existing_tests(workspace, module)
            if not tests:
                log(f"baseline {module}: no mapped test file exists in {source_root}: its mutants survive")
                continue
            outcome, seconds, detail = run_tests(workspace, tests, timeout=1800)
            if outcome != "passed":
                raise SystemExit(f"The unmutated tests of {module} do not pass ({outcome}: {detail}); fix them first.")
            baselines[module] = seconds
            log(f"baseline {module}: {len(tests)} test file(s) pass in {seconds:.0f} s")
        for i, mutant in enumerate(mutants, 1):
            tests = existing_tests(workspace, mutant.module)
            if not tests:
                results.append({"mutant": mutant.name, "status": "survived", "outcome": "no tests", "seconds": 0.0,
                                "killed_by": ""})
                log(f"[{i}/{len(mutants)}] survived     0 s  {mutant.name}  (no test file)")
                continue
            path = workspace / mutant.module
            original = path.read_text()
            path.write_text(mutant.source)
            try:
                timeout = max(min_timeout, timeout_factor * baselines[mutant.module])
                outcome, seconds, detail = run_tests(workspace, tests, timeout)
            finally:
                path.write_text(original)
            status = "survived" if outcome == "passed" else "killed"
            results.append({"mutant": mutant.name, "status": status, "outcome": outcome,
                            "seconds": round(seconds, 1), "killed_by": detail if status == "killed" else ""})
            log(f"[{i}/{len(mutants)}] {status:8s} {seconds:5.0f} s  {mutant.name}  {detail if status == 'killed' else ''}")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    return results


# -------------------------------------------------------------------------------- the named mutant classes
# The bugs issue 17 names, each a one-line (or one-function) edit: (module, what, old text, new text).
NAMED_MUTANTS = [
    ("diffuser/evaluation/evaluator.py", "evaluator: rewards added after an episode has ended",
     "returns += np.where(alive, rewards, 0.0)", "returns += rewards"),
    ("diffuser/evaluation/evaluator.py", "evaluator: `terminated` ignored",
     "alive &= ~(np.asarray(terminated) | np.asarray(truncated))", "alive &= ~np.asarray(truncated)"),
    ("diffuser/runtime/seeding.py", "evaluator: every episode reset with the same seed",
     "return [seed + i for i in range(num_episodes)]", "return [seed for i in range(num_episodes)]"),
    ("diffuser/evaluation/evaluator.py", "evaluator: ref_min/ref_max swapped in the score",
     "normalized_score(returns, ref_min, ref_max)", "normalized_score(returns, ref_max, ref_min)"),
    ("diffuser/training/trainer.py", "EMA: decay inverted (weight decay instead of 1 - decay)",
     "list(self.model.parameters()), 1.0 - decay)", "list(self.model.parameters()), decay)"),
    ("diffuser/training/online/update.py", "PPO: min replaced by max in the clipped objective",
     "policy_loss = -torch.min(", "policy_loss = -torch.max("),
    ("diffuser/evaluation/policy.py", "policy runner: history window never pushed",
     "        self.history.push(obs, action)\n", "        pass\n"),
    ("diffuser/evaluation/policy.py", "policy runner: a new chunk planned every step (no chunk replay)",
     "if self.plan is None or self.plan_index >= self.plan.shape[1]:", "if True:"),
    ("diffuser/training/checkpoints.py", "checkpoint: written straight to the final path (not atomic)",
     "    fd, tmp = tempfile.mkstemp(", "    torch.save(state, path)\n    return path\n    fd, tmp = tempfile.mkstemp("),
]


def named_mutants(root: Path = ROOT) -> list[Mutant]:
    mutants = []
    for module, what, old, new in NAMED_MUTANTS:
        text = (root / module).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"The named mutant '{what}' no longer applies: `{old}` is not once in {module}; update it.")
        line = text[: text.index(old)].count("\n") + 1
        mutants.append(Mutant(module, line, "named", what, text.replace(old, new)))
    return mutants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, default=100, help="mutants to run, drawn with --seed (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--modules", nargs="+", default=list(MODULE_TESTS), help="modules to mutate (default: all mapped)")
    parser.add_argument("--only", nargs="+", metavar="MODULE",
                        help="run only the drawn mutants of these modules (the draw is over --modules, so it is the same)")
    parser.add_argument("--survivors-of", type=Path, metavar="JSON",
                        help="run only the drawn mutants that survived in this earlier --json result")
    parser.add_argument("--named", action="store_true", help="run the issue's named mutant classes instead of a sample")
    parser.add_argument("--list", action="store_true", help="only count the mutants per module")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose code and tests are used (default: this one)")
    parser.add_argument("--timeout-factor", type=float, default=3.0, help="per-mutant timeout, times the unmutated tests' time")
    parser.add_argument("--min-timeout", type=float, default=60.0, help="per-mutant timeout floor in seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = [m for m in [*args.modules, *(args.only or [])] if m not in MODULE_TESTS]
    if unknown:
        parser.error(f"--modules {unknown} have no tests mapped in MODULE_TESTS; choose from {list(MODULE_TESTS)}.")
    source = args.source.resolve()

    if args.named:
        mutants = named_mutants(source)
    else:
        everything = [m for module in args.modules for m in generate_mutants(module, source)]
        if args.list:
            for module in args.modules:
                print(f"{sum(m.module == module for m in everything):5d}  {module}")
            print(f"{len(everything):5d}  in all")
            return 0
        mutants = sample_mutants(everything, args.sample, args.seed)
        print(f"{len(mutants)} of {len(everything)} mutants (seed {args.seed}) from {source}", flush=True)
        if args.survivors_of:
            survived = {r["mutant"] for r in json.loads(args.survivors_of.read_text()) if r["status"] == "survived"}
            mutants = [m for m in mutants if m.name in survived]
            print(f"running the {len(mutants)} of them that survived in {args.survivors_of}", flush=True)
        if args.only:
            mutants = [m for m in mutants if m.module in args.only]
            print(f"running the {len(mutants)} of them in {', '.join(args.only)}", flush=True)

    results = run_mutants(mutants, source, args.timeout_factor, args.min_timeout, lambda s: print(s, flush=True))
    killed = sum(r["status"] == "killed" for r in results)
    print(f"\nkilled {killed} / {len(results)}: score {100 * killed / max(len(results), 1):.1f}%")
    for r in results:
        if r["status"] == "survived":
            print(f"  survived: {r['mutant']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
