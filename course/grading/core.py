"""How an exercise is checked: cases, probes, judgements and the result a student sees.

A check happens in two halves so that it can be split across two processes:

1. ``Exercise.collect(obj, seed)`` calls the student's object on every case and records what came
   back as plain data (see ``plain.py``), or the exception it raised. This half runs the student's
   code; in a notebook it runs in the student's kernel, under ``course grade`` in an isolated child.
2. ``Exercise.grade(outcomes, seed)`` rebuilds the same cases from the seed, computes the reference
   answers itself and judges the plain data. It never touches student objects, so nothing the
   student's code does can change its verdict.

An exercise subclass supplies ``cases`` (edge cases first, then randomized ones, small before
large so that the first failure shown is easy to read), and may override ``probe`` (how to call
the object and what to record) and ``judge`` (how to compare). ``mistakes`` maps a hint to a wrong
implementation: when a failing answer equals what that mistake produces, the hint is shown.
"""

from __future__ import annotations

import copy
import functools
import html
import linecache
import math
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from course.grading import plain

PASS, FAIL, NOT_ATTEMPTED, MISSING = "passed", "failed", "not attempted", "missing"


@dataclass
class Case:
    """One input an exercise is tried on.

    Attributes:
        label: short name shown to the student ("random MDP #3 (S=5, A=2)").
        args: positional arguments, built by trusted library code from the seed.
        kwargs: keyword arguments.
        shown: a readable description of the input, printed when this case fails.
        part: the part of the exercise this case belongs to (parts score separately).
        data: anything else the exercise's probe or judge needs (e.g. a scenario script).
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    shown: str = ""
    part: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What happened when the student's object met one case, as plain data."""

    value: Any = None  # plain data returned by the probe
    error: str | None = None  # exception class name, if it raised
    error_message: str = ""
    where: str = ""  # "line 4: return V @ P" in the student's code, when known
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "value": self.value,
            "error": self.error,
            "error_message": self.error_message,
            "where": self.where,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Any) -> Outcome:
        """Rebuild an outcome from untrusted JSON; anything malformed becomes an error outcome."""
        if not isinstance(data, dict):
            return cls(error="MalformedOutcome", error_message="no result for this case")
        error = data.get("error")
        return cls(
            value=data.get("value"),
            error=str(error)[:100] if error is not None else None,
            error_message=str(data.get("error_message", ""))[:1000],
            where=str(data.get("where", ""))[:300],
            seconds=float(data["seconds"]) if isinstance(data.get("seconds"), (int, float)) else 0,
        )


class CheckTimeout(Exception):
    """Raised inside the student's code when a case runs past its time limit."""


class Exercise:
    """A graded exercise: the reference, the cases, and how to judge an answer.

    Subclasses set ``solves`` (the library's function or class that the student writes again,
    e.g. ``solves = course.td.q_learning_update``) and implement ``cases``. Everything that names
    the exercise derives from ``solves``, so it is declared once: ``name`` is its ``__name__``,
    ``id`` is ``"<module>.<name>"`` with ``<module>`` the part of ``course.<module>`` that
    defines it (the id a notebook passes to ``check``), ``kind`` is ``"class"`` or
    ``"function"``, and ``reference`` calls it.
    """

    solves: Any = None  # the library object the exercise asks the student to write again
    id: str = ""  # "<module>.<name>", as in the syllabus (derived from ``solves``)
    lesson: str = ""  # notebook stem, e.g. "01_mdps"
    name: str = ""  # the name the student defines in the notebook (derived from ``solves``)
    kind: str = "function"  # or "class" (derived from ``solves``)
    parts: dict[str, int] = {"": 1}  # part name -> points
    time_limit: float = 5.0  # seconds per case before the check gives up on a case
    mutates_args: bool = False  # whether changing an argument in place is the point
    uses_optimizer: bool = False  # whether the cases step a torch optimizer (see collect)
    atol: float = 1e-4
    rtol: float = 1e-4

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        target = cls.__dict__.get("solves")
        if isinstance(target, staticmethod):
            target = target.__func__
        if target is None:
            return  # a base class shared by one lesson's exercises
        module = getattr(target, "__module__", "") or ""
        if not module.startswith("course.") or not hasattr(target, "__name__"):
            raise TypeError(f"{cls.__name__}.solves must be a function or class of course.<module>")
        cls.solves = staticmethod(target)  # a plain function would become a method
        cls.name = target.__name__
        cls.id = f"{module.removeprefix('course.')}.{cls.name}"
        cls.kind = "class" if isinstance(target, type) else "function"

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """The right answer on one case: ``solves`` itself, unless an exercise needs more."""
        return self.solves(*args, **kwargs)

    def mistakes(self) -> dict[str, Callable[..., Any]]:
        """Hint -> wrong implementation of a classic mistake."""
        return {}

    def cases(self, generator: torch.Generator) -> list[Case]:
        raise NotImplementedError

    # --- half 1: runs the student's code ------------------------------------------------------

    def probe(self, obj: Any, case: Case) -> Any:
        """Call ``obj`` on a fresh copy of the case's inputs and return plain data."""
        args, kwargs = copy.deepcopy((case.args, case.kwargs))
        result = obj(*args, **kwargs)
        if not self.mutates_args:
            changed = _changed_argument(case, args, kwargs)
            if changed is not None:
                return {"type": "mutated", "argument": changed}
        return plain.encode(result)

    def collect(
        self, obj: Any, seed: int = 0, judge_as_you_go: bool = False
    ) -> list[Outcome | None]:
        """Run the student's object on every case; stop at the first NotImplementedError.

        With ``judge_as_you_go`` (same process only), a part's remaining cases are skipped once
        one of its cases fails, so a wrong answer is reported at once instead of after every
        case has run (a wrong loop may be slow on the rest).
        """
        if self.uses_optimizer:
            warm_up_optimizers()
        outcomes: list[Outcome | None] = []
        failed_parts: set[str] = set()
        for case in self.build_cases(seed):
            if case.part in failed_parts:
                outcomes.append(None)
                continue
            outcome = run_guarded(lambda case=case: self.probe(obj, case), self.time_limit)
            outcomes.append(outcome)
            if outcome.error in ("NotImplementedError", "CheckTimeout"):
                break  # the rest would say the same, slowly
            if judge_as_you_go and self._verdict(case, outcome) is not None:
                failed_parts.add(case.part)
        return outcomes

    # --- half 2: judges plain data, never touches student objects ------------------------------

    def judge(self, case: Case, got: Any, want: Any) -> str | None:
        """Return None when ``got`` is right, else one sentence saying what is wrong."""
        return compare(got, want, atol=self.atol, rtol=self.rtol)

    def grade(self, outcomes: Sequence[Outcome | None], seed: int = 0) -> CheckResult:
        cases = self.build_cases(seed)
        max_score = sum(self.parts.values())
        first = outcomes[0] if outcomes else None
        if first is not None and first.error == "NotImplementedError" and len(outcomes) == 1:
            return self._result(NOT_ATTEMPTED, 0, max_score, len(cases), 0, not_attempted=True)
        failed_parts: dict[str, tuple[Case, str, str | None, Outcome]] = {}
        n_passed = 0
        for i, case in enumerate(cases):
            if case.part in failed_parts:
                continue
            outcome = outcomes[i] if i < len(outcomes) else None
            reason = self._verdict(case, outcome)
            if reason is None:
                n_passed += 1
                continue
            hint = self._hint(case, outcome) if outcome and outcome.error is None else None
            failed_parts[case.part] = (case, reason, hint, outcome or Outcome())
        score = sum(p for name, p in self.parts.items() if name not in failed_parts)
        if not failed_parts:
            return self._result(PASS, score, max_score, len(cases), n_passed)
        return self._result(FAIL, score, max_score, len(cases), n_passed, failures=failed_parts)

    def check(self, obj: Any, seed: int = 0) -> CheckResult:
        """Both halves in one process: what a notebook's check cell runs."""
        problem = self.unusable(obj)
        if problem is not None:
            status = NOT_ATTEMPTED if obj is None else FAIL
            return self._result(status, 0, sum(self.parts.values()), 0, 0, problem=problem)
        return self.grade(self.collect(obj, seed, judge_as_you_go=True), seed)

    def unusable(self, obj: Any) -> str | None:
        """Why ``obj`` cannot be an answer at all (None when it can be tried)."""
        if obj is None:
            return f"No `{self.name}` yet: define it in the exercise cell above and run that cell."
        if self.kind == "class" and not isinstance(obj, type):
            return f"`{self.name}` should be a class (written `class {self.name}: ...`)."
        if self.kind == "function" and (isinstance(obj, type) or not callable(obj)):
            return f"`{self.name}` should be a function (written `def {self.name}(...):`)."
        if _is_reference(obj, self):
            return (
                f"This is the library's own `{self.name}`, not yours: write your own in the "
                "exercise cell (the reference is for later lessons)."
            )
        return None

    # --- internals --------------------------------------------------------------------------

    def build_cases(self, seed: int) -> list[Case]:
        generator = torch.Generator().manual_seed(int(seed))
        cases = self.cases(generator)
        for index, case in enumerate(cases):
            case.data.setdefault("index", index)
        return cases

    def _verdict(self, case: Case, outcome: Outcome | None) -> str | None:
        if outcome is None:
            return "this case was not run (an earlier case stopped the check)"
        if outcome.error == "CheckTimeout":
            return (
                f"did not finish within {self.time_limit:g} s: look for a loop whose stopping "
                "condition can never become true"
            )
        if outcome.error is not None:
            where = f" at {outcome.where}" if outcome.where else ""
            return f"raised {outcome.error}{where}: {outcome.error_message}".rstrip(": ")
        got = outcome.value
        if isinstance(got, dict) and got.get("type") == "mutated":
            return (
                f"changed its argument `{got.get('argument')}` in place; compute a new tensor "
                "instead (e.g. `x = x.clone()` first, or avoid `+=` on inputs)"
            )
        want = self.probe(self.reference, case)
        try:
            return self.judge(case, got, want)
        except Exception as exc:  # a malformed answer must not crash the judge
            return f"returned something the check cannot read ({type(exc).__name__}: {exc})"

    def _hint(self, case: Case, outcome: Outcome) -> str | None:
        for hint, wrong in self.mistakes().items():
            try:
                mistaken = self.probe(wrong, case)
                if self.judge(case, outcome.value, mistaken) is None:
                    return hint
            except Exception:
                continue
        return None

    def _result(
        self,
        status: str,
        score: int,
        max_score: int,
        n_cases: int,
        n_passed: int,
        failures: dict | None = None,
        problem: str | None = None,
        not_attempted: bool = False,
    ) -> CheckResult:
        lines: list[str] = []
        if problem:
            lines.append(problem)
        elif not_attempted:
            lines.append(
                f"Not attempted yet: replace `raise NotImplementedError` in `{self.name}` with "
                "your code, run that cell, then run this check again."
            )
        elif status == PASS:
            lines.append(f"All {n_cases} cases pass.")
        for part, (case, reason, hint, _outcome) in (failures or {}).items():
            heading = f"[{part}] " if len(self.parts) > 1 else ""
            lines.append(f"{heading}Failed on case {case.data.get('index', '?')}, {case.label}:")
            lines.append(f"  {reason}".replace("\n", "\n  "))
            shown = case.shown or _show_args(case)
            if shown:
                lines.append("  input: " + shown.replace("\n", "\n         "))
            if hint:
                lines.append(f"  hint: {hint}")
        if failures and len(self.parts) > 1:
            passed = [p for p in self.parts if p not in failures]
            if passed:
                lines.append("Parts that pass: " + ", ".join(passed) + ".")
        return CheckResult(
            exercise_id=self.id,
            status=status,
            score=score,
            max_score=max_score,
            message="\n".join(lines),
            n_cases=n_cases,
            n_passed=n_passed,
        )


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one exercise. Shows as a coloured box in a notebook, as text elsewhere."""

    exercise_id: str
    status: str  # "passed", "failed", "not attempted" or "missing"
    score: int
    max_score: int
    message: str
    n_cases: int = 0
    n_passed: int = 0

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_json(self) -> dict:
        return {
            "exercise": self.exercise_id,
            "status": self.status,
            "score": self.score,
            "max_score": self.max_score,
            "message": self.message,
        }

    def __str__(self) -> str:
        mark = {PASS: "PASS", FAIL: "FAIL"}.get(self.status, "TODO")
        head = f"{mark} {self.exercise_id} ({self.score}/{self.max_score})"
        return head + ("\n" + self.message if self.message else "")

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colour, mark = {
            PASS: ("#1a7f37", "&#10004;"),
            FAIL: ("#cf222e", "&#10008;"),
        }.get(self.status, ("#9a6700", "&#9998;"))
        body = html.escape(self.message)
        return (
            f'<div style="border-left:6px solid {colour};padding:4px 10px;margin:2px 0">'
            f'<b style="color:{colour}">{mark} {html.escape(self.exercise_id)}: {self.status}</b>'
            f" ({self.score}/{self.max_score})"
            f'<pre style="margin:4px 0;white-space:pre-wrap">{body}</pre></div>'
        )


# --- comparing plain data ---------------------------------------------------------------------


def compare(
    got: Any, want: Any, atol: float = 1e-4, rtol: float = 1e-4, exact_dtype: bool = False
) -> str | None:
    """Compare a student's plain answer with the reference's; None when they agree.

    Arrays agree when shapes match and values are close; any float dtype matches any float dtype
    (and numpy matches torch) unless ``exact_dtype``; integer and bool answers must match in kind.
    """
    if plain.is_array(want) or plain.is_number(want):
        got = plain.as_array(got)
        if not (plain.is_array(got) or plain.is_number(got)):
            return f"returned {plain.describe(got)}; expected {plain.describe(want)}"
        return compare_arrays(got, want, atol, rtol, exact_dtype)
    if isinstance(want, dict) and want.get("type") in ("tuple", "list"):
        if not (isinstance(got, dict) and got.get("type") in ("tuple", "list")):
            return f"returned {plain.describe(got)}; expected {plain.describe(want)}"
        if len(got["items"]) != len(want["items"]):
            return f"returned {len(got['items'])} values; expected {len(want['items'])}"
        for i, (g, w) in enumerate(zip(got["items"], want["items"])):
            reason = compare(g, w, atol, rtol, exact_dtype)
            if reason is not None:
                return f"item {i} of the returned tuple: {reason}"
        return None
    if got != want:
        return f"returned {plain.describe(got)}; expected {plain.describe(want)}"
    return None


def compare_scalar(
    got: Any, want: Any, rtol: float, atol: float, what: str = "the result"
) -> str | None:
    """A differentiable scalar answer (a loss, a penalty) against the reference's value.

    ``got`` must be an encoded torch tensor of shape ``[]`` or ``[1]``: a Python float or a numpy
    number would have left autograd, so the optimizer could not use it.
    """
    if not (plain.is_array(got) and got.get("type") == "tensor"):
        return (
            f"returned {plain.describe(got)}; expected a scalar torch tensor that autograd can "
            "differentiate (no .item(), no numpy)"
        )
    if got["shape"] not in ([], [1]):
        return f"returned shape {tuple(got['shape'])}; expected a scalar: sum everything"
    g = float(plain.to_tensor(got).reshape(()))
    w = float(plain.to_tensor(want).reshape(()))
    if not math.isclose(g, w, rel_tol=rtol, abs_tol=atol):
        return f"{what} is {g:.6g}; expected {w:.6g}"
    return None


def compare_arrays(
    got: dict, want: dict, atol: float, rtol: float, exact_dtype: bool = False
) -> str | None:
    g, w = plain.to_tensor(got), plain.to_tensor(want)
    if tuple(g.shape) != tuple(w.shape):
        return f"returned shape {tuple(g.shape)}; expected shape {tuple(w.shape)}"
    want_dtype, got_dtype = want.get("dtype", ""), got.get("dtype", "")
    if exact_dtype and want_dtype != got_dtype:
        return f"returned dtype {got_dtype}; expected {want_dtype}"
    if w.dtype == torch.bool and g.dtype != torch.bool:
        return f"returned dtype {got_dtype or 'number'}; expected a bool tensor"
    if w.dtype == torch.int64 and g.is_floating_point():
        return f"returned dtype {got_dtype}; expected integers (e.g. torch.int64)"
    gd, wd = g.double(), w.double()
    if torch.isnan(gd).any() and not torch.isnan(wd).any():
        return "returned NaN values; expected finite numbers"
    close = torch.isclose(gd, wd, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    bad = (~close).nonzero()[0].tolist()
    index = tuple(bad) if len(bad) != 1 else f"[{bad[0]}]"
    n_bad = int((~close).sum())
    return (
        f"{n_bad} of {close.numel()} values differ; first at index {index}: "
        f"expected {plain.show_number(float(wd[tuple(bad)]))}, got "
        f"{plain.show_number(float(gd[tuple(bad)]))}"
        + (
            ""
            if g.numel() > 64
            else f"\n  expected: {plain.show_tensor(w)}\n  got:      {plain.show_tensor(g)}"
        )
    )


# --- running student code safely -------------------------------------------------------------


def first_difference(
    got: Any, want: dict[str, Any], atol: float, rtol: float
) -> tuple[str, str] | None:
    """``(name, reason)`` of the first entry of ``want`` (name -> plain data, e.g. a network's
    parameters) that ``got`` does not match (a missing name, or a ``got`` that is no dict,
    compares as None); None when every entry matches."""
    for name, w in want.items():
        g = got.get(name) if isinstance(got, dict) else None
        reason = compare(g, w, atol, rtol)
        if reason is not None:
            return name, reason
    return None


def warm_up_optimizers() -> None:
    """Take one step of Adam and of SGD, once per process.

    torch imports its compiler stack on the first optimizer step (seconds, more on a busy
    machine). Done inside a case's time limit, a right answer would time out, half-way through
    an import that then stays broken for the rest of the process.
    """
    p = torch.zeros(1, requires_grad=True)
    for optimizer in (torch.optim.Adam([p]), torch.optim.SGD([p], lr=0.0)):
        p.sum().backward()
        optimizer.step()


def run_guarded(call: Callable[[], Any], time_limit: float) -> Outcome:
    """Run one probe, turning any exception (or a runaway loop) into an Outcome."""
    start = time.perf_counter()
    try:
        with _time_limit(time_limit):
            value = call()
        return Outcome(value=value, seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a student's SystemExit is a failed case too
        return Outcome(
            error=type(exc).__name__,
            error_message=_first_line(exc),
            where=_student_frame(exc),
            seconds=time.perf_counter() - start,
        )


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (POSIX main thread only; elsewhere no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _show_args(case: Case) -> str:
    """A default description of a case's inputs: small tensors and numbers, printed."""
    shown = []
    for i, arg in enumerate((*case.args, *case.kwargs.values())):
        if isinstance(arg, torch.Tensor):
            shown.append(f"argument {i + 1} = {plain.show_tensor(arg)}")
        elif isinstance(arg, (int, float, bool)):
            shown.append(f"argument {i + 1} = {arg!r}")
    return "\n".join(shown)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _student_frame(exc: BaseException) -> str:
    """The last traceback line that is not library code: where the student's code failed."""
    library = (str(__file__).rsplit("/grading/", 1)[0], "/site-packages/", "/lib/python3")
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if not any(part in frame.filename for part in library):
            line = frame.line or linecache.getline(frame.filename, frame.lineno or 0).strip()
            return f"line {frame.lineno}: {line}" if line else f"line {frame.lineno}"
    return ""


def _changed_argument(case: Case, args: tuple, kwargs: dict) -> str | None:
    names = [f"argument {i + 1}" for i in range(len(args))] + list(kwargs)
    for name, before, after in zip(
        names, (*case.args, *case.kwargs.values()), (*args, *kwargs.values())
    ):
        if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor):
            if before.shape != after.shape or not torch.equal(before, after):
                return name
    return None


def _is_reference(obj: Any, exercise: Exercise) -> bool:
    if obj is exercise.solves:
        return True
    module = getattr(obj, "__module__", "") or ""
    return module.startswith("course.") and getattr(obj, "__name__", None) == exercise.name


def switched_mistakes(
    wrong: Callable[..., Any], mistakes: Sequence[tuple[str, str]]
) -> dict[str, Callable[..., Any]]:
    """``Exercise.mistakes`` for an exercise whose wrong versions are one function with a
    switch: hint -> ``wrong`` called with ``mistake=<name>``."""
    return {hint: functools.partial(wrong, mistake=name) for hint, name in mistakes}


# --- the registry ----------------------------------------------------------------------------

EXERCISES: dict[str, Exercise] = {}


def register(cls: type[Exercise]) -> type[Exercise]:
    """Class decorator: make an exercise known to ``check`` and to the grader."""
    if cls.solves is None or not cls.lesson:
        raise TypeError(f"{cls.__name__} needs `solves` (the library object) and a `lesson`")
    if cls.id in EXERCISES:
        raise ValueError(f"exercise {cls.id!r} is registered twice")
    EXERCISES[cls.id] = cls()
    return cls


def get_exercise(exercise_id: str) -> Exercise:
    if exercise_id not in EXERCISES:
        known = ", ".join(sorted(EXERCISES))
        raise KeyError(f"unknown exercise id {exercise_id!r}; known ids: {known}")
    return EXERCISES[exercise_id]


def lesson_exercises(lesson: str) -> list[Exercise]:
    return [ex for ex in EXERCISES.values() if ex.lesson == lesson]
