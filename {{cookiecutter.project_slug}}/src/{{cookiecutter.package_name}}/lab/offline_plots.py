"""The page `dvc plots show` and `dvc plots diff` write, with its chart libraries inlined.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so it is blank without
network (a cluster node, a train). This page carries the three libraries in itself, at the
versions DVC's page loads (its vega-lite specs are written for them). They come from the npm
registry, and each tarball is checked against the sha512 integrity npm publishes for it, on
download and on every use of the cached copy.

Standard library only: the template's post-generation hook runs this module in cookiecutter's
interpreter, before the project's dependencies are installed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import os
import tarfile
import urllib.request
from pathlib import Path

# (name, version, `npm view <name>@<version> dist.integrity`), as dvc_render/vega.py loads them.
LIBRARIES = (
    (
        "vega",
        "5.20.2",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    (
        "vega-lite",
        "5.2.0",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    (
        "vega-embed",
        "6.18.2",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)
REGISTRY = "https://registry.npmjs.org"
# Relative to .dvc/, which is where DVC resolves `plots.html_template` of .dvc/config from.
PAGE = Path("plots") / "offline.html"
# Shared by every project baked from the template, so that a lab (or a test suite) downloads once.
CACHE_FOLDER = "segmentation-pipeline-template"
DOWNLOAD_TIMEOUT_S = 60

# DVC's default page (dvc_render/html.py) with `{libraries}` where it has `{scripts}`. DVC
# fills `{refresh_tag}` and `{plot_divs}`; a `{scripts}` left in would add its CDN tags back.
PAGE_HTML = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
{libraries}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
{notice}
    {plot_divs}
</body>
</html>
"""


class FetchError(Exception):
    """A library could not be downloaded, or its bytes are not the ones npm published."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / CACHE_FOLDER / "npm"


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    if hashlib.new(algorithm, data).digest() != base64.b64decode(expected):
        raise FetchError(f"{what} does not match its npm integrity {integrity}")


def tarball(name: str, version: str, integrity: str, cache: Path) -> bytes:
    """The package's npm tarball, from the cache when a verified copy is there."""
    cached = cache / f"{name}@{version}.tgz"
    try:
        data = cached.read_bytes()
        check_integrity(data, integrity, str(cached))
        return data
    except (OSError, FetchError):
        pass  # not cached yet, unreadable, or a truncated or tampered copy: download it again
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (OSError, http.client.HTTPException) as error:  # no network, refused, cut off
        raise FetchError(f"cannot download {url}: {error}") from error
    check_integrity(data, integrity, url)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        partial.replace(cached)  # atomic, so that concurrent bakes never read half a file
    except OSError:
        partial.unlink(missing_ok=True)  # a read-only or full cache only costs a download next time
    return data


def minified_script(name: str, data: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        script = archive.extractfile(f"package/build/{name}.min.js").read().decode("utf-8")
    # The source map is not shipped; a browser's developer tools would look for it.
    script = script.replace(f"//# sourceMappingURL={name}.min.js.map", "").rstrip()
    for breaking in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        # Would end the <script> element early, or be replaced by DVC's filling of the page.
        if breaking in script:
            raise FetchError(f"{name}.min.js contains {breaking!r} and cannot be inlined")
    return script


def write_offline_page(dvc_dir: Path, cache: Path | None = None) -> Path:
    """Write the page with the three libraries inlined; raises FetchError without network."""
    cache = cache or cache_dir()
    scripts = []
    for name, version, integrity in LIBRARIES:
        script = minified_script(name, tarball(name, version, integrity, cache))
        scripts.append(f"    <!-- {name}@{version} from the npm registry -->\n    <script>{script}</script>")
    return _write(dvc_dir, _page(libraries="\n".join(scripts), notice=""))


def write_cdn_page(dvc_dir: Path, refetch_command: str) -> Path:
    """The fallback: DVC's CDN scripts, and a line on the page that says how to go offline."""
    notice = (
        "    <p>These charts load vega from a CDN and stay blank without network. "
        f"Run <code>{refetch_command}</code> once with network to render them offline.</p>"
    )
    return _write(dvc_dir, _page(libraries="    {scripts}", notice=notice))


def _page(libraries: str, notice: str) -> str:
    # Not str.format: the page's own braces (CSS, DVC's placeholders) stay as they are. The
    # notice goes in first, so that no text inside the libraries is taken for its placeholder.
    return PAGE_HTML.replace("{notice}", notice).replace("{libraries}", libraries)


def _write(dvc_dir: Path, html: str) -> Path:
    page = dvc_dir / PAGE
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(html, encoding="utf-8")
    return page
