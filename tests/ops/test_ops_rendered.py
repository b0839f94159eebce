"""kdlab's documents opened by the real programs a researcher opens them with, on a small
study trained here (tests/builders.py):

- ``kdlab methodology``'s LaTeX, ``\\input`` into a plain article, compiles with ``pdflatex``
  (texlive-latex-base) without errors or text running into the margin, and its first page
  renders with ``pdftoppm`` (poppler-utils) to a non-empty PNG;
- the analysis ``report.html`` loads in headless ``chromium``: every image decodes
  (natural width > 0) and the page raises no script error, failed resource or
  ``console.error``, and the browser logs no console message for it. A copy of the page with one broken image and one script error shows
  that the check sees both.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kdlab import cli
from kdlab.run.layout import analysis_dir
from builders import analysed_copy, trained_copy

pytestmark = pytest.mark.slow

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                   "google-chrome") if shutil.which(name)), None)


# ---- LaTeX -----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None,
                    reason="needs pdflatex and pdftoppm (apt-get install texlive-latex-base "
                           "poppler-utils)")
def test_methodology_latex_compiles_and_renders(tmp_path_factory, tmp_path):
    study = trained_copy(tmp_path_factory)
    assert cli.main(["methodology", str(study.path)]) == 0
    tex = analysis_dir(study.analysis_dir, study.name) / "methodology" / "methodology.tex"
    shutil.copy(tex, tmp_path / "methodology.tex")
    (tmp_path / "thesis.tex").write_text(
        "\\documentclass{article}\n\\begin{document}\n\\input{methodology}\n"
        "After the section.\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                             "thesis.tex"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    log = (tmp_path / "thesis.log").read_text(errors="replace")
    assert result.returncode == 0, log[-3000:]
    assert "Missing character" not in log and "Undefined control sequence" not in log
    # nothing runs into the margin (TeX reports every box wider than its line)
    overfull = re.findall(r"Overfull \\hbox \(([0-9.]+)pt too wide\)", log)
    assert [float(points) for points in overfull if float(points) > 1.0] == [], overfull
    pages = int(re.search(r"Output written on thesis\.pdf \((\d+) pages?", log)[1])
    assert pages >= 2

    subprocess.run(["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "thesis.pdf", "page"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=120)
    png = next(tmp_path.glob("page*.png"))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (pytest.approx(8.27 * 80, abs=3), pytest.approx(11.69 * 80, abs=3)) \
        or (width, height) == (pytest.approx(8.5 * 80, abs=3), pytest.approx(11 * 80, abs=3))
    assert len(data) > 20_000        # a page of text, not a blank one (blank: about 2 kB)
    # the text on page 1 is the section's
    text = subprocess.run(["pdftotext", "-f", "1", "-l", "1", "thesis.pdf", "-"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if text.returncode == 0:
        assert "Methodology" in text.stdout and "Hardware and scheduling" in text.stdout


# ---- the report in a browser ----------------------------------------------------------------

# Put first in <head>: records every script error, failed resource and console.error, and
# after the load event writes what it found, with each image's state, into the page.
_CHECK_SCRIPT = """<script>
window.__kdlabErrors = [];
window.addEventListener('error', function (event) {
  var target = event.target;
  window.__kdlabErrors.push(target && target !== window && (target.src || target.href)
    ? 'resource failed: ' + (target.src || target.href) : 'script error: ' + event.message);
}, true);
var __kdlabConsoleError = console.error;
console.error = function () {
  window.__kdlabErrors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  __kdlabConsoleError.apply(console, arguments);
};
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var heading = document.querySelector('h2');
  var result = {images: images.length, errors: window.__kdlabErrors,
    firstSection: heading ? heading.textContent : null,
    folded: document.querySelectorAll('details:not([open]) img').length,
    broken: images.filter(function (image) { return !(image.complete && image.naturalWidth > 0); })
                  .map(function (image) { return image.getAttribute('src'); })};
  var out = document.createElement('pre');
  out.id = 'kdlab-check';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def _open_in_chromium(page: Path, tmp_path: Path) -> dict:
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--enable-logging=stderr", "--v=0",      # the page's console, as the browser logs it
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--allow-file-access-from-files",
         "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="kdlab-check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"chromium gave no check result (exit {result.returncode}): " \
                  f"{result.stderr[-1500:]}"
    found = json.loads(match[1].replace("&quot;", '"').replace("&amp;", "&")
                       .replace("&lt;", "<").replace("&gt;", ">"))
    found["console"] = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return found


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_report_loads_in_a_real_browser(tmp_path_factory, tmp_path):
    study = analysed_copy(tmp_path_factory)
    folder = analysis_dir(study.analysis_dir, study.name)
    html = (folder / "report.html").read_text()
    assert "<head>" in html
    checked = folder / ".report-check.html"      # beside it: the same relative links
    checked.write_text(html.replace("<head>", "<head>" + _CHECK_SCRIPT, 1))
    found = _open_in_chromium(checked, tmp_path)
    assert found["images"] == html.count("<img ") and found["images"] >= 10
    assert found["broken"] == [] and found["errors"] == [] and found["console"] == []
    # it opens on the findings; the figures wait folded (and still load: none is broken)
    assert found["firstSection"] == "Findings" and found["folded"] >= 10

    # the check itself can fail: one image pointing nowhere, one script error
    broken = html.replace('<img src="', '<img src="missing/', 1).replace(
        "</body>", "<script>notDefinedAnywhere();</script></body>")
    checked.write_text(broken.replace("<head>", "<head>" + _CHECK_SCRIPT, 1))
    found = _open_in_chromium(checked, tmp_path)
    assert len(found["broken"]) == 1 and found["broken"][0].startswith("missing/")
    assert any("notDefinedAnywhere" in error for error in found["errors"])
    assert any(error.startswith("resource failed: ") for error in found["errors"])
    assert any("notDefinedAnywhere" in line for line in found["console"])
