"""Grade a whole class's notebooks: the engine behind ``course grade`` (orchestration only).

For every notebook found, the grader goes through the stages, one module each:

1. ``notebooks``: read it as untrusted bytes (never opening the student's file for writing) and
   recognise its lesson, from the metadata ``course release`` writes into every lesson or, when
   that was lost, from the exercises the code defines and checks;
2. ``isolation`` and ``run``: run it in a confined child process (``sandbox.py``), which runs the
   cells, then calls each exercise's ``collect`` on the student's object and reports plain data;
3. ``judge``: judge that data here, with ``Exercise.grade``, against references computed in this
   process, which never imports or calls student code. Nothing the child prints or claims as a
   verdict is read; a child that dies, times out or writes garbage costs only the exercises it
   did not report;
4. ``gradebook``: write a CSV gradebook (atomically), one Markdown feedback file per submission,
   and a cache next to the gradebook, keyed by the notebook's content, the seed and the course's
   source, so an interrupted run resumes without regrading what is done.

The records every stage speaks in (statuses, ``Limits``, ``SubmissionResult``...) live in
``records``; they are imported here too, so ``course.grading.grade`` is the one import a caller
needs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import queue
import secrets
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from course.grading.gradebook import (
    ResultCache,
    cache_key,
    course_fingerprint,
    exercise_columns,
    feedback_markdown,
    gradebook_csv,
    results_json,
    write_feedback,
    write_gradebook,
)
from course.grading.isolation import environment as _environment
from course.grading.isolation import free_uids, probe_sandbox, readable_by_submissions
from course.grading.judge import judge
from course.grading.notebooks import (
    MAX_NOTEBOOK_BYTES,
    SUPPORTED_VERSIONS,
    find_notebooks,
    lessons,
    read_notebook,
    recognise,
    student_of,
)
from course.grading.records import (
    CRASHED,
    EMPTY,
    EX_CRASHED,
    EX_NOT_RUN,
    EX_TIMED_OUT,
    GRADED,
    NOT_JSON,
    NOT_NOTEBOOK,
    OTHER_LESSON,
    TIMED_OUT,
    TOO_LARGE,
    UNKNOWN_LESSON,
    UNKNOWN_VERSION,
    ClassResults,
    Confinement,
    GradeError,
    Limits,
    SandboxInfo,
    SubmissionResult,
)
from course.grading.run import (
    Attempt,
    Report,
    parse_report,
    run_notebook,
    run_submission,
    why_stopped,
)

if TYPE_CHECKING:
    from course.grading.cluster import RayGrader

DEFAULT_LIMITS = Limits()

__all__ = [
    "CRASHED",
    "EMPTY",
    "EX_CRASHED",
    "EX_NOT_RUN",
    "EX_TIMED_OUT",
    "GRADED",
    "MAX_NOTEBOOK_BYTES",
    "NOT_JSON",
    "NOT_NOTEBOOK",
    "OTHER_LESSON",
    "SUPPORTED_VERSIONS",
    "TIMED_OUT",
    "TOO_LARGE",
    "UNKNOWN_LESSON",
    "UNKNOWN_VERSION",
    "Attempt",
    "ClassResults",
    "Confinement",
    "GradeError",
    "Limits",
    "Report",
    "SandboxInfo",
    "SubmissionResult",
    "_environment",
    "cache_key",
    "course_fingerprint",
    "exercise_columns",
    "feedback_markdown",
    "find_notebooks",
    "grade_class",
    "grade_notebook",
    "gradebook_csv",
    "judge",
    "lessons",
    "parse_report",
    "probe_sandbox",
    "read_notebook",
    "recognise",
    "results_json",
    "run_notebook",
    "run_submission",
    "student_of",
    "write_feedback",
    "write_gradebook",
]


def grade_notebook(
    path: Path,
    seed: int,
    limits: Limits,
    confinement: Confinement | None = None,
    lesson_filter: str | None = None,
) -> SubmissionResult:
    """Grade one notebook file; never raises on a bad submission.

    Args:
        path: the notebook (read only, never written).
        seed: seeds the cases of every exercise.
        limits: limits on the run.
        confinement: how to confine the run beyond what every run gets (see ``Confinement``).
        lesson_filter: grade only this lesson.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return unreadable(path, seed, exc)
    return grade_submission(data, path, student_of(path), seed, limits, confinement, lesson_filter)


def unreadable(path: Path, seed: int, exc: OSError) -> SubmissionResult:
    """The row of a notebook file that cannot be read."""
    result = SubmissionResult(str(path), student_of(path), "", NOT_NOTEBOOK, seed=seed)
    result.notes = [f"The file cannot be read ({exc.strerror})."]
    return result


def grade_submission(
    data: bytes,
    path: Path,
    student: str,
    seed: int,
    limits: Limits,
    confinement: Confinement | None = None,
    lesson_filter: str | None = None,
) -> SubmissionResult:
    """Grade one notebook's bytes (intake, confined run, judge); never raises on bad bytes.

    This is what runs for each submission, on this machine or on a Ray worker
    (``course.grading.cluster``): ``path`` only names the notebook, it is not read.

    Args:
        data: the notebook file's content.
        path: where the notebook lies on the teacher's machine (its name helps recognise the
            lesson; the row records it).
        student: the submission's student (``student_of(path)``, found by the caller).
        seed: seeds the cases of every exercise.
        limits: limits on the run.
        confinement: how to confine the run beyond what every run gets (see ``Confinement``).
        lesson_filter: grade only this lesson.
    """
    result = SubmissionResult(notebook=str(path), student=student, lesson="", status="", seed=seed)
    result.sha256 = hashlib.sha256(data).hexdigest()
    nb, problem, why = read_notebook(data)
    if nb is None:
        result.status, result.notes = problem or NOT_NOTEBOOK, [why]
        return result
    lesson, problem, how = recognise(nb, path)
    result.lesson = lesson
    if problem is not None:
        result.status, result.notes = problem, [how]
        return result
    if lesson_filter is not None and lesson != lesson_filter:
        result.status = OTHER_LESSON
        result.notes = [f"This is lesson {lesson}, not {lesson_filter}: it was not graded."]
        return result
    if how != "metadata":
        result.notes.append(f"Lesson {lesson} recognised from the notebook's {how}.")
    attempt, notes = run_submission(data, path.name, lesson, seed, limits, confinement)
    result.notes += notes
    result.cell_errors = [attempt.report.cell_errors[k] for k in sorted(attempt.report.cell_errors)]
    result.results = judge(lesson, seed, attempt, limits)
    if attempt.report.done:
        result.status = GRADED
    else:
        status, why = why_stopped(attempt, limits)
        result.status = TIMED_OUT if status == EX_TIMED_OUT else CRASHED
        result.notes.append(why[0].upper() + why[1:] + ".")
    return result


def _confinements(info: SandboxInfo, workers: int, limits: Limits) -> queue.Queue[Confinement]:
    """One confinement per worker: each its own dedicated user where the machine allows."""
    uids: list[int | None] = list(free_uids(workers)) if info.dedicated_users else []
    uids += [None] * (workers - len(uids))
    confinements: queue.Queue[Confinement] = queue.Queue()
    for uid in uids:
        confinements.put(
            Confinement(
                uid=uid,
                cgroup=info.process_limit == "cgroup",
                require=info.required(limits.isolate_network),
            )
        )
    return confinements


def _check_isolation(info: SandboxInfo, limits: Limits, allowed: bool, where: str) -> None:
    weak = info.weaknesses(limits.isolate_network)
    if weak and not allowed:
        raise GradeError(
            f"{where} cannot confine submissions as the teacher guide promises ("
            f"{'; '.join(weak)}): grade inside a container or VM, or pass "
            "--allow-weak-isolation to grade anyway"
        )


def grade_class(
    paths: Iterable[Path | str],
    out: Path | str | None = "grades/grades.csv",
    feedback: Path | str | None = "grades/feedback",
    workers: int = 1,
    limits: Limits = DEFAULT_LIMITS,
    seed: int | None = None,
    lesson: str | None = None,
    fresh: bool = False,
    progress: bool = True,
    on_result: Callable[[SubmissionResult], None] | None = None,
    allow_weak_isolation: bool = False,
    ray: bool | str = False,
) -> ClassResults:
    """Grade every notebook under ``paths`` and write the gradebook and feedback.

    Args:
        paths: notebooks or folders of them (searched recursively).
        out: the CSV gradebook; the results cache is written beside it
            (``grades/grades.csv`` -> ``grades/grades.cache.jsonl``). None writes neither.
        feedback: folder for one Markdown file per submission (``<student>/<lesson>.md``).
        workers: submissions run at once on this machine (not used with ``ray``: there each
            submission takes one CPU of the cluster).
        limits: limits on each submission's run.
        seed: seeds the cases every exercise is tried on; default: the seed of the previous
            run recorded in the cache, else a fresh random one.
        lesson: grade only this lesson (others get an "other lesson" row).
        fresh: ignore cached results (regrade everything).
        progress: show a progress bar on stderr.
        on_result: called with each finished submission (from worker threads).
        allow_weak_isolation: grade even where this machine (or a Ray node) confines
            submissions less than the teacher guide promises (``SandboxInfo.weaknesses``).
        ray: run the submissions on a Ray cluster (``course.grading.cluster``): ``True`` for
            ``ray.init()``'s default, or the head's ``"HOST:PORT"``. The results, gradebook,
            feedback and cache are those of a local run with the same seed.

    Returns:
        The results, sorted by student, lesson and notebook path.

    Raises:
        GradeError: no notebook was found, an option is invalid, the confinement is weaker
            than promised and ``allow_weak_isolation`` is not set, or the Ray cluster cannot
            be used.
    """
    notebooks = find_notebooks(paths)
    if not notebooks:
        raise GradeError("no .ipynb notebook found under the given paths")
    if workers < 1:
        raise GradeError(f"--workers is {workers}; it must be at least 1")
    if lesson is not None and lesson not in lessons():
        raise GradeError(f"unknown lesson {lesson!r}; graded lessons: {', '.join(lessons())}")
    cluster = None
    if ray is not False:
        from course.grading.cluster import RayGrader  # imports Ray: only when asked

        cluster = RayGrader(None if ray is True or ray == "" else str(ray))
    try:
        if cluster is None:
            nodes: dict[str, SandboxInfo] = {}
            info = probe_sandbox(limits)
            _check_isolation(info, limits, allow_weak_isolation, "this machine")
        else:
            nodes = cluster.probe(limits)
            for name, node_info in nodes.items():
                _check_isolation(node_info, limits, allow_weak_isolation, f"Ray node {name}")
            info = max(nodes.values(), key=lambda i: len(i.weaknesses(limits.isolate_network)))
        return _grade_all(
            notebooks, out, feedback, workers, limits, seed, lesson, fresh, progress,
            on_result, info, nodes, cluster, allow_weak_isolation,
        )  # fmt: skip
    finally:
        if cluster is not None:
            cluster.close()


def _grade_all(
    notebooks: list[Path],
    out: Path | str | None,
    feedback: Path | str | None,
    workers: int,
    limits: Limits,
    seed: int | None,
    lesson: str | None,
    fresh: bool,
    progress: bool,
    on_result: Callable[[SubmissionResult], None] | None,
    info: SandboxInfo,
    nodes: dict[str, SandboxInfo],
    cluster: RayGrader | None,
    allow_weak_isolation: bool,
) -> ClassResults:
    """``grade_class`` once the sandbox is known: cache, dispatch, gradebook and feedback."""
    for name, where in (("--out", out), ("--feedback", feedback)):
        readable = where is not None and readable_by_submissions(Path(where))
        if readable:
            raise GradeError(
                f"{name} {where} lies inside {readable}, which submissions may read: "
                "choose a folder outside it"
            )
    cache = ResultCache(Path(out).with_suffix(".cache.jsonl")) if out is not None else None
    if seed is None:
        seed = cache.seed if cache is not None and cache.seed is not None else None
    if seed is None:
        seed = secrets.randbelow(2**31)
    if cache is not None and cache.seed != seed:
        cache.append({"seed": seed})
        cache.seed = seed
    fingerprint = course_fingerprint()

    def cached(path: Path) -> SubmissionResult | None:
        if cache is None or fresh:
            return None
        with contextlib.suppress(OSError):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found = cache.get(cache_key(digest, seed, fingerprint, limits, lesson))
            if found is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    result = SubmissionResult.from_json(found)
                    result.notebook, result.student = str(path), student_of(path)
                    return result
        return None

    def store(result: SubmissionResult) -> None:
        if cache is not None:  # the key is this machine's alone: workers only send results
            cache.put(cache_key(result.sha256, seed, fingerprint, limits, lesson), result.to_json())

    def finished() -> Iterator[tuple[SubmissionResult, bool]]:
        if cluster is None:
            confinements = _confinements(info, workers, limits)

            def one(path: Path) -> tuple[SubmissionResult, bool]:
                found = cached(path)
                if found is not None:
                    return found, True
                confinement = confinements.get()
                try:
                    result = grade_notebook(path, seed, limits, confinement, lesson)
                finally:
                    confinements.put(confinement)
                store(result)
                return result, False

            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                yield from pool.map(one, notebooks)
            return
        todo = []
        for path in notebooks:
            found = cached(path)
            if found is not None:
                yield found, True
            else:
                todo.append((path, student_of(path)))
        for result in cluster.grade(todo, seed, limits, lesson, allow_weak_isolation):
            store(result)
            yield result, False

    from tqdm.auto import tqdm

    results: list[SubmissionResult] = []
    reused = 0
    bar = tqdm(
        total=len(notebooks), desc="grading", unit="notebook", disable=not progress, file=sys.stderr
    )
    for result, was_cached in finished():
        results.append(result)
        reused += was_cached
        bar.update()
        if on_result is not None:
            on_result(result)
    bar.close()
    results.sort(key=lambda r: (r.student, r.lesson, r.notebook))
    if out is not None:
        write_gradebook(results, Path(out))
    if feedback is not None:
        write_feedback(results, Path(feedback))
    graded_on = dict(cluster.graded_on) if cluster is not None else {}
    return ClassResults(results, seed, info, reused, nodes, graded_on)
