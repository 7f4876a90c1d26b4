"""`dvc plots diff` renders with no network: the page DVC fills carries vega itself.

Two tiny experiments are diffed to HTML and opened in headless Chromium with every network
path closed. DVC's default page, which loads vega from a CDN, is opened the same way and must
stay blank: that shows the browser had no network, so the charts came from the page itself.
"""

from __future__ import annotations

import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import DEFAULT_PACKAGE, DEFAULT_SLUG, TINY, git, project_env, run
from dvc_render.html import PAGE_HTML as DVC_DEFAULT_PAGE
from matplotlib.image import imread

pytestmark = pytest.mark.slow

PAGE = Path(".dvc/plots/offline.html")
LIBRARIES = ("vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2")
EXPERIMENTS = {"lr-high": "1e-2", "lr-low": "1e-4"}
# Every host name resolves to nothing, and the proxy is one of those names: no request leaves.
NO_NETWORK = (
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://proxy.invalid:1",
)
# Simulated time the page gets to run its scripts before Chromium screenshots or dumps it.
VIRTUAL_TIME_MS = 5000
WINDOW = "1400,1000"
# A channel this far from white is ink (axes, labels, lines), not anti-aliased background.
INK = 0.05


@pytest.fixture(scope="module")
def diff_pages(bake, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two experiments' `dvc plots diff` as this project writes it, and as DVC's default page."""
    project = bake(tmp_path_factory.mktemp("plots"))
    env = project_env(project)
    for name, lr in EXPERIMENTS.items():
        # Only up to train: its curves are the plots, and evaluate would add half a minute.
        run(
            ["dvc", "exp", "run", "train", *TINY, "-S", f"lr={lr}", "--name", name],
            cwd=project,
            env=env,
        )
    out = tmp_path_factory.mktemp("pages")
    default_page = out / "dvc-default.html"
    default_page.write_text(DVC_DEFAULT_PAGE)
    pages = {}
    for kind, template in (("offline", []), ("cdn", ["--html-template", default_page])):
        run(
            ["dvc", "plots", "diff", *EXPERIMENTS, "-o", out / kind, *template],
            cwd=project,
            env=env,
        )
        pages[kind] = out / kind / "index.html"
    pages["project"] = project
    return pages


def chromium(page: Path, *action: str) -> str:
    """Open ``page`` in headless Chromium with no network; return what ``action`` printed."""
    browser = shutil.which("chromium")
    assert browser, (
        "headless Chromium is missing: `apt-get install chromium` (.ci/env.sh does it)"
    )
    args = [
        browser,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-background-networking",
        "--disable-gpu",
        f"--user-data-dir={page.parent / 'chromium-profile'}",
        *NO_NETWORK,
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        f"--window-size={WINDOW}",
        *action,
        page.as_uri(),
    ]
    return run(args, cwd=page.parent, timeout=120).stdout


class ChartMarks(HTMLParser):
    """The size of each element vega drew a chart into (``class="marks"``: a canvas or an svg)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[float, float]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("canvas", "svg") and "marks" in (found.get("class") or "").split():
            self.sizes.append(
                (float(found.get("width") or 0), float(found.get("height") or 0))
            )


def drawn_charts(page: Path) -> list[tuple[float, float]]:
    marks = ChartMarks()
    marks.feed(chromium(page, "--dump-dom"))
    return marks.sizes


def ink_pixels(page: Path) -> tuple[int, Path]:
    """How many pixels of the page's screenshot are not background, and the screenshot."""
    screenshot = page.with_suffix(".png")
    chromium(page, f"--screenshot={screenshot}")
    print(f"screenshot of {page}: {screenshot}")
    rgb = imread(screenshot)[..., :3]
    return int(((1.0 - rgb) > INK).any(axis=-1).sum()), screenshot


def test_the_first_commit_holds_the_page_with_the_pinned_libraries(
    diff_pages: dict[str, Path],
) -> None:
    project = diff_pages["project"]
    assert git(project, "ls-files", PAGE.as_posix()) == PAGE.as_posix()
    html = (project / PAGE).read_text()
    for library in LIBRARIES:
        assert f"<!-- {library} from the npm registry -->" in html
    assert "{scripts}" not in html and "cdn.jsdelivr.net" not in html


def test_plots_diff_of_two_experiments_draws_with_no_network(
    diff_pages: dict[str, Path],
) -> None:
    page = diff_pages["offline"]
    plots = page.read_text().count("vegaEmbed('#")
    assert plots >= 3, (
        "expected train loss, val Dice and val Dice per class in the diff"
    )
    charts = drawn_charts(page)
    assert len(charts) == plots, f"{plots} plots in {page}, but vega drew {len(charts)}"
    assert all(width > 0 and height > 0 for width, height in charts), charts
    ink, screenshot = ink_pixels(page)
    assert ink > 10_000, f"{screenshot} is nearly blank ({ink} pixels of ink)"


def test_dvc_default_page_stays_blank_without_network(
    diff_pages: dict[str, Path],
) -> None:
    """The same diff on DVC's CDN page: proof that the browser above could not reach a CDN."""
    page = diff_pages["cdn"]
    assert "cdn.jsdelivr.net" in page.read_text()
    assert drawn_charts(page) == []
    ink, screenshot = ink_pixels(page)
    assert ink == 0, f"{screenshot} shows {ink} pixels of ink with no network"


def test_a_bake_without_network_still_succeeds_and_plots_offline_fetches_later(
    bake,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    damaged = cache / "segmentation-pipeline-template" / "npm" / "vega@5.20.2.tgz"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"a download cut short")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for variable in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(
            variable, "http://127.0.0.1:9"
        )  # a closed port: the registry is unreachable
    monkeypatch.setenv("no_proxy", "")
    project = bake(tmp_path / "out")
    warning = capfd.readouterr().out
    assert f"{DEFAULT_SLUG} plots-offline" in warning and "WARNING" in warning
    page = (project / PAGE).read_text()
    assert (
        "{scripts}" in page and f"{DEFAULT_SLUG} plots-offline" in page
    )  # DVC's CDN tags, and how to fix
    assert git(project, "status", "--porcelain") == ""

    for variable in ("https_proxy", "HTTPS_PROXY", "no_proxy"):
        monkeypatch.delenv(variable)
    env = project_env(project)
    run([sys.executable, "-m", DEFAULT_PACKAGE, "plots-offline"], cwd=project, env=env)
    assert "<!-- vega@5.20.2 from the npm registry -->" in (project / PAGE).read_text()
    assert damaged.stat().st_size > 1_000_000, (
        "the damaged cached copy was not replaced"
    )


def test_plots_offline_does_not_import_torch(diff_pages: dict[str, Path]) -> None:
    """It runs where nothing else is installed yet, e.g. right after a bake without network."""
    project = diff_pages["project"]
    code = (
        f"import sys; from {DEFAULT_PACKAGE}.cli import main\n"
        "try:\n    main(['plots-offline'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'plots-offline imported torch'"
    )
    run([sys.executable, "-c", code], cwd=project, env=project_env(project))
    run(
        ["git", "diff", "--exit-code", "--", PAGE], cwd=project
    )  # the same bytes as the bake's
