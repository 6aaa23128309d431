"""End to end: Lesson 01 in JupyterLab, in a real (headless) Chromium, as a student sees it.

JupyterLab runs from this environment on 127.0.0.1 (free port, empty token) over a temporary
folder holding copies of ``solutions/01_mdps.ipynb`` (outputs cleared, so everything asserted
was drawn by this run) and ``lessons/01_mdps.ipynb`` (generated from the solution when absent).
Playwright (the pip package, with Debian's ``/usr/bin/chromium``; no browser download) opens
each notebook, runs Run > Run All Cells and checks what is on screen: in the solution, no error
output, every check cell's pass verdict, a figure, and the gridworld explorer's slider redrawing
its plot when moved with the keyboard; in the lesson, every check cell saying "not attempted"
and no error other than the exercises' ``NotImplementedError``. Screenshots go to the test's
temporary folder; with ``COURSE_SCREENSHOTS=docs/screenshots`` small copies are also written
there (the README's pictures).

Skipped only when Chromium or playwright is missing; ``.ci/run`` installs both.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from course.release import make_lesson

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_mdps.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 90
RUN_ALL_S = 300  # one core shared with other work: the solution alone takes about a minute
WIDGET_REDRAW_S = 60
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on screen
CHECK_CALL = re.compile(r"""^\s*check\(\s*["']([\w.]+)["']""", re.MULTILINE)

pytestmark = pytest.mark.slow

# User settings for this JupyterLab only: all cells attached to the page (so every output can be
# queried), and no news or update prompts over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def _sync_playwright():  # noqa: ANN202  (playwright is optional: imported lazily)
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install it with `apt-get install -y chromium`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed: `.venv/bin/pip install playwright`")
    return sync_playwright


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (kernels start their own session, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(proc: subprocess.Popen) -> None:
    """Stop JupyterLab and everything it started: its process group, then any kernel left."""
    below = _descendants(proc.pid)
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the solution (outputs cleared) and the lesson of Lesson 01."""
    solution_path = ROOT / "solutions" / NOTEBOOK
    if not solution_path.exists():
        pytest.fail(f"{solution_path} is missing")
    folder = tmp_path_factory.mktemp("lab")
    solution = nbformat.read(solution_path, as_version=4)
    lesson_path = ROOT / "lessons" / NOTEBOOK
    lesson = (
        nbformat.read(lesson_path, as_version=4)
        if lesson_path.exists()
        else make_lesson(solution, NOTEBOOK)
    )
    for cell in solution.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    (folder / "solutions").mkdir()
    (folder / "lessons").mkdir()
    nbformat.write(solution, folder / "solutions" / NOTEBOOK)
    nbformat.write(lesson, folder / "lessons" / NOTEBOOK)
    return folder


@pytest.fixture(scope="module")
def lab(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab serving ``workspace`` on loopback; yields its base URL and always stops it."""
    state = tmp_path_factory.mktemp("lab-state")
    settings = state / "settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(
        os.environ,
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_DATA_DIR=str(state / "data"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    log = (state / "jupyterlab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=0",  # a free port, chosen by the OS; read back from its info file
            "--ServerApp.port_retries=0",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={workspace}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.extension_manager=readonly",
            *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
        ],
        cwd=workspace,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = state / "runtime" / f"jpserver-{proc.pid}.json"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited ({proc.returncode}); see {state}/jupyterlab.log")
            try:
                url = f"http://127.0.0.1:{json.loads(info.read_text())['port']}"
                with urllib.request.urlopen(f"{url}/api/status", timeout=5) as response:
                    if response.status == 200:
                        break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer in {SERVER_START_S} s; see {state}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def browser(lab: str) -> Iterator[object]:
    sync_playwright = _sync_playwright()
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _save_small_png(source: Path, target: Path, width: int = 1200) -> None:
    """A palette PNG at most ``width`` wide: a few tens of KB for the README."""
    from PIL import Image

    image = Image.open(source).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


def _screenshot(page, tmp_path: Path, name: str, for_readme: bool = False) -> None:  # noqa: ANN001
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    docs = os.environ.get("COURSE_SCREENSHOTS")
    if docs and for_readme:
        _save_small_png(path, ROOT / docs / f"{name}.png")


def _open_and_run_all(browser, lab: str, path: str, tmp_path: Path):  # noqa: ANN001, ANN202
    """Open a notebook in JupyterLab, Run > Run All Cells, wait until the kernel is done."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(f"{lab}/lab/tree/{path}?reset")  # reset: only this notebook open
    page.wait_for_selector(f"{PANEL} .jp-Cell", timeout=120_000)
    # the status bar says "Python 3 (ipykernel) | Idle" once the kernel is connected and ready
    page.wait_for_function(
        "() => /\\| Idle/.test(document.querySelector('.jp-StatusBar-Widget')?.textContent)",
        timeout=120_000,
        polling=500,
    )
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # done when the kernel is idle, no cell waits ([*]) and the prompts stopped changing
    try:
        page.wait_for_function(
            """() => {
                const prompts = [...document.querySelectorAll(
                    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt')]
                    .map(p => p.textContent.trim());
                const idle = /\\| Idle/.test(
                    document.querySelector('.jp-StatusBar-Widget')?.textContent);
                const state = prompts.join('|');
                const settled = window.__lastPrompts === state;
                window.__lastPrompts = state;
                return idle && settled && prompts.some(p => /\\[\\d+\\]/.test(p))
                    && !prompts.some(p => p.includes('*'));
            }""",
            timeout=RUN_ALL_S * 1000,
            polling=1000,
        )
    except Exception:
        page.screenshot(path=str(tmp_path / "run_all_timeout.png"))
        raise
    _screenshot(page, tmp_path, path.replace("/", "_").removesuffix(".ipynb") + "_run")
    return page


def _checks_in(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [i for c in nb.cells if c.cell_type == "code" for i in CHECK_CALL.findall(c.source)]


def _verdicts(page) -> list[str]:  # noqa: ANN001
    texts = page.locator(f"{PANEL} .jp-OutputArea-output.jp-RenderedHTMLCommon b").all_inner_texts()
    return [t for t in texts if re.match(r"^\S+ [\w.]+: (passed|failed|not attempted)", t)]


def _stderr_texts(page) -> list[str]:  # noqa: ANN001
    return page.locator(
        f"{PANEL} .jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']"
    ).all_inner_texts()


def test_solution_runs_clean_and_its_widget_responds(
    browser, lab: str, workspace: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    checks = _checks_in(workspace / "solutions" / NOTEBOOK)
    assert checks, "the solution should contain check cells"
    page = _open_and_run_all(browser, lab, f"solutions/{NOTEBOOK}", tmp_path)
    try:
        errors = _stderr_texts(page)
        assert not errors, f"error outputs on screen: {errors}"

        verdicts = _verdicts(page)
        assert verdicts == [f"\u2714 {i}: passed" for i in checks], verdicts

        images = page.locator(f"{PANEL} .jp-RenderedImage img")
        assert images.count() >= 1, "no figure rendered"
        assert images.first.evaluate("img => img.naturalWidth > 0 && img.complete")

        slider = page.locator(f"{PANEL} .jp-OutputArea-output .widget-slider").first
        slider.wait_for(state="visible")
        slider.scroll_into_view_if_needed()
        explorer = (
            page.locator(f"{PANEL} .jp-OutputArea-output .widget-vbox")
            .filter(has=page.locator(".widget-slider"))
            .last
        )
        plot = explorer.locator("img").first
        plot.wait_for(state="visible", timeout=WIDGET_REDRAW_S * 1000)
        readout = slider.locator(".widget-readout")
        before_src, before_value = plot.get_attribute("src"), readout.inner_text()
        _screenshot(page, tmp_path, "lesson01_explorer", for_readme=True)

        slider.locator(".noUi-handle").focus()
        for _ in range(5):
            page.keyboard.press("ArrowLeft")
        # the explorer replaces its image: query it afresh until the new one has loaded
        page.wait_for_function(
            """(before) => {
                const boxes = [...document.querySelectorAll(
                    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output .widget-vbox')]
                    .filter(b => b.querySelector('.widget-slider'));
                const img = boxes.at(-1)?.querySelector('img');
                return img && img.getAttribute('src') !== before && img.complete
                    && img.naturalWidth > 0;
            }""",
            arg=before_src,
            timeout=WIDGET_REDRAW_S * 1000,
            polling=500,
        )
        plot = explorer.locator("img").first
        assert readout.inner_text() != before_value, "the slider's value did not change"
        assert plot.get_attribute("src") != before_src, "the plot was not redrawn"
        explorer.screenshot(path=str(tmp_path / "explorer_after.png"))
        _screenshot(page, tmp_path, "lesson01_explorer_after")
        assert not _stderr_texts(page), "moving the slider wrote errors"
    finally:
        page.close()


def test_lesson_runs_and_checks_say_not_attempted(
    browser, lab: str, workspace: Path, tmp_path: Path
) -> None:  # noqa: ANN001
    checks = _checks_in(workspace / "lessons" / NOTEBOOK)
    assert checks, "the lesson should contain check cells"
    page = _open_and_run_all(browser, lab, f"lessons/{NOTEBOOK}", tmp_path)
    try:
        verdicts = _verdicts(page)
        assert verdicts == [f"\u270e {i}: not attempted" for i in checks], verdicts
        # errors only where release expects them: cells tagged raises-exception
        nb = nbformat.read(workspace / "lessons" / NOTEBOOK, as_version=4)
        errors = page.evaluate(
            """() => [...document.querySelectorAll(
                    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell')]
                .map((cell, i) => [i, [...cell.querySelectorAll(
                    ".jp-RenderedText[data-mime-type='application/vnd.jupyter.stderr']")]
                    .map(e => e.innerText).join('\\n')])
                .filter(([i, text]) => text)"""
        )
        assert page.locator(f"{PANEL} .jp-Notebook .jp-Cell").count() == len(nb.cells)
        unexpected = [
            text
            for i, text in errors
            if "raises-exception" not in nb.cells[i].metadata.get("tags", [])
        ]
        assert not unexpected, f"errors in cells not tagged raises-exception: {unexpected}"
        assert any("NotImplementedError" in text for _, text in errors)
        exercise = page.locator(f"{PANEL} .jp-CodeCell", has_text="YOUR CODE HERE").first
        exercise.evaluate("cell => cell.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)  # let the scroll settle before the picture
        _screenshot(page, tmp_path, "lesson01_exercise", for_readme=True)
    finally:
        page.close()
