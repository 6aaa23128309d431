"""Finding, reading and recognising submissions, as untrusted bytes.

A student's file is only ever read. ``read_notebook`` turns its bytes into a notebook's JSON or
into a status with a sentence that says what to fix; ``recognise`` finds its lesson.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from course.grading import sandbox
from course.grading.core import (
    lesson_exercises,
)
from course.grading.records import (
    EMPTY,
    NOT_JSON,
    NOT_NOTEBOOK,
    TOO_LARGE,
    UNKNOWN_LESSON,
    UNKNOWN_VERSION,
    GradeError,
)
from course.release import LESSON_FORMAT_VERSION

# Lesson formats this grader understands (``course release`` writes the version it produced).
SUPPORTED_VERSIONS = (LESSON_FORMAT_VERSION,)
MAX_NOTEBOOK_BYTES = 256 * 2**20


def find_notebooks(paths: Iterable[Path | str]) -> list[Path]:
    """Every notebook named or found (recursively) under the given paths, sorted, no duplicates.

    A file named explicitly is graded whatever its extension (so a bad upload gets a row);
    inside folders only ``*.ipynb`` files count, checkpoints excluded.

    Raises:
        GradeError: a path does not exist.
    """
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_file():
            found.add(p)
        elif p.is_dir():
            found |= {
                q for q in p.rglob("*.ipynb") if q.is_file() and ".ipynb_checkpoints" not in q.parts
            }
        else:
            raise GradeError(f"{p} does not exist: give notebooks or folders of notebooks")
    return sorted(found)


def student_of(path: Path) -> str:
    """A submission's student: the name of the folder holding it (``<student>/03_dqn.ipynb``)."""
    return path.resolve().parent.name or "unknown"


def read_notebook(data: bytes) -> tuple[dict | None, str | None, str]:
    """Parse untrusted notebook bytes.

    Returns:
        (the notebook's JSON, None, "") or (None, a submission status, why) when it is unusable.
    """
    if not data.strip():
        return None, EMPTY, "The file is empty: save the notebook in Jupyter and submit it again."
    if len(data) > MAX_NOTEBOOK_BYTES:
        return (
            None,
            TOO_LARGE,
            (
                f"The file is {len(data) / 2**20:.0f} MiB; clear the outputs (Edit > Clear All "
                "Outputs), save and submit again."
            ),
        )
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return (
            None,
            NOT_JSON,
            (
                "The file is not a Jupyter notebook (it is not JSON): submit the .ipynb file "
                "saved by Jupyter, not an export or a copy of its text."
            ),
        )
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list) or not isinstance(nb.get("nbformat", 4), int):
        return (
            None,
            NOT_NOTEBOOK,
            (
                "The file is JSON but not a Jupyter notebook (no list of cells): submit the .ipynb "
                "file saved by Jupyter."
            ),
        )
    if nb.get("nbformat", 4) < 4:
        return (
            None,
            NOT_NOTEBOOK,
            (
                f"The notebook has the old format {nb.get('nbformat')}; open and save it in a "
                "current Jupyter, then submit it again."
            ),
        )
    return nb, None, ""


def lessons() -> list[str]:
    """Every lesson that has registered exercises, in order."""
    from course.grading.core import EXERCISES

    return sorted({ex.lesson for ex in EXERCISES.values()})


def recognise(nb: dict, path: Path) -> tuple[str, str | None, str]:
    """The lesson of a notebook.

    The metadata ``course release`` writes (``{"course": {"lesson", "version"}}``) decides;
    without it, the exercises the code checks (``check("mdp.q_from_v", ...)``) and defines; last,
    the file's name.

    Returns:
        (lesson, None, how it was recognised) or (lesson or "", a submission status, why).
    """
    meta = nb.get("metadata", {})
    meta = meta.get("course") if isinstance(meta, dict) else None
    known = lessons()
    if isinstance(meta, dict) and "lesson" in meta:
        lesson, version = str(meta["lesson"])[:100], meta.get("version")
        if version not in SUPPORTED_VERSIONS:
            return (
                lesson,
                UNKNOWN_VERSION,
                (
                    f"The notebook says it is version {version!r} of lesson {lesson}; this grader "
                    f"reads versions {', '.join(map(str, SUPPORTED_VERSIONS))}: update the course "
                    "package (or submit the lesson as distributed)."
                ),
            )
        if lesson not in known:
            return (
                lesson,
                UNKNOWN_LESSON,
                (
                    f"The notebook says it is lesson {lesson!r}, which has no graded exercises "
                    f"here (graded lessons: {', '.join(known)})."
                ),
            )
        return lesson, None, "metadata"
    code = "\n".join(source for _, source in sandbox.code_cells(nb))
    scores = {}
    for lesson in known:
        score = 0
        for ex in lesson_exercises(lesson):
            score += 2 * bool(re.search(rf"""check\(\s*["']{re.escape(ex.id)}["']""", code))
            score += bool(re.search(rf"^\s*(def|class)\s+{re.escape(ex.name)}\b", code, re.M))
        if score:
            scores[lesson] = score
    best = sorted(scores, key=lambda k: (-scores[k], k))
    if best and (len(best) == 1 or scores[best[0]] > scores[best[1]]):
        return best[0], None, "exercises"
    if path.stem in known:
        return path.stem, None, "file name"
    return (
        "",
        UNKNOWN_LESSON,
        (
            "No exercise of a graded lesson was found in this notebook, and its metadata does not "
            f"name a lesson (graded lessons: {', '.join(known)}): submit the lesson notebook."
        ),
    )
