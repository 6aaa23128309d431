"""What grading writes: the results cache, the CSV gradebook, the feedback and the JSON."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

import course
from course.grading.core import (
    lesson_exercises,
)
from course.grading.notebooks import lessons
from course.grading.records import ClassResults, Limits, SubmissionResult


def course_fingerprint() -> str:
    """A hash of what decides a grade (the grader, the checks, the graded lessons' reference
    modules): cached results are reused only by the same grader."""
    from course.grading.core import EXERCISES

    root = Path(course.__file__).resolve().parent
    files = {root / "__init__.py", root / "release.py", *root.joinpath("grading").rglob("*.py")}
    files |= {root / f"{ex.id.split('.', 1)[0]}.py" for ex in EXERCISES.values()}
    digest = hashlib.sha256(course.__version__.encode())
    for p in sorted(f for f in files if f.exists()):
        digest.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return digest.hexdigest()[:16]


class ResultCache:
    """Finished results, one JSON line each, appended as they come (so a crash loses nothing).

    The first line of a run records its seed; a later run without ``--seed`` reuses the last
    one, so that resuming grades on the same cases.

    Every line is signed with an HMAC-SHA256 under a key of this cache alone, kept beside it
    (``grades.cache.key``, mode 0600, outside what any sandbox may read). A line the grader did
    not write, or that was changed, is not trusted: its notebook is graded again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = _load_key(path.with_suffix(".key"))
        self.entries: dict[str, dict] = {}
        self.seed: int | None = None
        self.rejected = 0  # lines that were not the grader's own
        if path.exists():
            for line in path.read_bytes().split(b"\n"):
                if not line.strip():
                    continue
                item = self._verified(line)
                if item is None:
                    self.rejected += 1
                elif isinstance(item.get("seed"), int) and len(item) == 1:
                    self.seed = item["seed"]
                elif isinstance(item.get("key"), str) and isinstance(item.get("result"), dict):
                    self.entries[item["key"]] = item["result"]

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def _verified(self, line: bytes) -> dict | None:
        """The item of one line if its HMAC is right; None for anything else (a line cut
        short by an interruption, or one the grader did not write)."""
        try:
            signed = json.loads(line)
            text, mac = signed["item"], signed["mac"]
            if not (isinstance(text, str) and isinstance(mac, str)):
                return None
            if not hmac.compare_digest(self._mac(text), mac):
                return None
            item = json.loads(text)
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
        return item if isinstance(item, dict) else None

    def append(self, item: dict) -> None:
        text = json.dumps(item, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"item": text, "mac": self._mac(text)}) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, result: dict) -> None:
        self.entries[key] = result
        self.append({"key": key, "result": result})


def _load_key(path: Path) -> bytes:
    """The cache's HMAC key: read from ``path``, or made there (mode 0600) when missing or
    unreadable as a key; a new key leaves every earlier line untrusted."""
    with contextlib.suppress(OSError, ValueError):
        key = bytes.fromhex(path.read_text().strip())
        if len(key) >= 32:
            return key
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key.hex() + "\n")
    return key


def cache_key(sha256: str, seed: int, fingerprint: str, limits: Limits, lesson: str | None) -> str:
    text = json.dumps([sha256, seed, fingerprint, limits.__dict__, lesson], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def exercise_columns(results: Sequence[SubmissionResult]) -> list[str]:
    """Exercise ids of every lesson present, lesson by lesson, in registry order."""
    present = sorted({r.lesson for r in results if r.lesson in lessons()})
    return [ex.id for lesson in present for ex in lesson_exercises(lesson)]


def gradebook_csv(results: Sequence[SubmissionResult]) -> str:
    columns = exercise_columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "lesson", *columns, "total", "max", "status", "notebook"])
    for r in results:
        scores = {x.exercise_id: x.score for x in r.results}
        writer.writerow(
            [
                r.student,
                r.lesson,
                *(scores.get(c, "") for c in columns),
                r.total,
                r.max_score,
                r.status,
                r.notebook,
            ]
        )
    return buffer.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_gradebook(results: Sequence[SubmissionResult], path: Path) -> None:
    """Write the CSV gradebook atomically (a reader never sees half a file)."""
    _write_atomic(path, gradebook_csv(results))


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name).strip(".") or "_"


def feedback_markdown(r: SubmissionResult) -> str:
    """The feedback a student reads: what passed, what failed and why."""
    title = f"# {r.lesson or 'Unrecognised notebook'}: feedback for {r.student}"
    lines = [title, "", f"Notebook: `{Path(r.notebook).name}`  "]
    if r.results:
        lines.append(f"Score: **{r.total} / {r.max_score}**  ")
    lines += [f"Status: {r.status} (cases seeded with {r.seed})", ""]
    if r.results:
        lines += ["| Exercise | Result | Score |", "|---|---|---|"]
        lines += [
            f"| `{x.exercise_id}` | {x.status} | {x.score}/{x.max_score} |" for x in r.results
        ]
        lines.append("")
        for x in r.results:
            lines += [f"## `{x.exercise_id}`: {x.status}", "", "```text", x.message, "```", ""]
    if r.cell_errors:
        lines += ["## Cells that raised an error", ""]
        for e in r.cell_errors:
            where = f" at {e['where']}" if e.get("where") else ""
            lines.append(f"- code cell {e['cell']}: `{e['error']}: {e['message']}`{where}")
        lines.append("")
    if r.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in r.notes] + [""]
    return "\n".join(lines)


def write_feedback(results: Sequence[SubmissionResult], folder: Path) -> list[Path]:
    """One Markdown file per submission: ``<folder>/<student>/<notebook stem>.md``."""
    written: list[Path] = []
    used: set[Path] = set()
    for r in results:
        base = folder / _safe(r.student) / _safe(Path(r.notebook).stem)
        target, n = base.with_suffix(".md"), 1
        while target in used:
            n += 1
            target = base.with_name(f"{base.name}-{n}.md")
        used.add(target)
        _write_atomic(target, feedback_markdown(r))
        written.append(target)
    return written


def results_json(results: ClassResults) -> str:
    """The results as JSON, each submission's exercises keyed by exercise id."""
    return json.dumps(
        {
            "seed": results.seed,
            "summary": results.counts(),
            "submissions": [r.to_json() for r in results.submissions],
        },
        indent=2,
    )
