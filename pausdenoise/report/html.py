"""The self-contained HTML page of a report, and the writer of its figure and table files.

:func:`render_html` assembles :class:`ReportSection` s (figures embedded as base64 PNG,
tables inline) into one HTML page; :class:`ReportWriter` saves every figure as PNG and every
table as CSV and JSON under a directory that the caller chooses.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from pausdenoise.report.figures import figure_png

__all__ = ["ReportSection", "ReportWriter", "render_html"]


@dataclass
class ReportSection:
    """One section of the HTML report: a heading, prose, figures (PNG bytes) and tables.

    Parameters
    ----------
    title : str
        The section's heading.
    text : str, optional
        A paragraph (HTML, not escaped) under the heading.
    figures : list of (str, bytes), optional
        Caption and PNG bytes of each figure.
    tables : list of (str, DataFrame), optional
        Caption and content of each table.
    """

    title: str
    text: str = ""
    figures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:.2em .5em;text-align:right}
th{background:#f4f4f4} figure{margin:1em 0} figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def render_html(
    title: str,
    sections: Sequence[ReportSection],
    *,
    config: Mapping | None = None,
    versions: Mapping[str, str] | None = None,
    timings: Mapping[str, float] | None = None,
) -> str:
    """Render one self-contained HTML page: figures embedded as base64 PNG, tables inline.

    Parameters
    ----------
    title : str
        The page's title and top heading.
    sections : sequence of ReportSection
        The sections, in order.
    config : mapping, optional
        The run's configuration, shown as JSON at the end.
    versions : mapping of str to str, optional
        Package → version, shown as a table at the end.
    timings : mapping of str to float, optional
        Stage → wall time in seconds, shown as a table at the top.

    Returns
    -------
    str
        The HTML text.
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if timings:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{v:.1f}</td></tr>"
            for k, v in timings.items()
        )
        parts.append(f"<h2>Timings per stage [s]</h2><table>{rows}</table>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        if sec.text:
            parts.append(f"<p>{sec.text}</p>")
        for caption, png in sec.figures:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<figure><img src='data:image/png;base64,{b64}' style='max-width:100%'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        for caption, table in sec.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>")
            parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}",
                                       border=0, na_rep="—"))
    if config is not None:
        parts.append("<h2>Configuration of this run</h2><pre>")
        parts.append(html.escape(json.dumps(config, indent=2, default=str)))
        parts.append("</pre>")
    if versions:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in versions.items()
        )
        parts.append(f"<h2>Software versions</h2><table>{rows}</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


class ReportWriter:
    """Save a report's figures as PNG under ``root/figures`` and tables under ``root/tables``.

    Parameters
    ----------
    root : Path
        The report directory (``figures/`` and ``tables/`` are created in it).
    dpi : int
        Resolution of the PNG figures, dots per inch.
    """

    def __init__(self, root: Path, dpi: int) -> None:
        self.fig_dir = root / "figures"
        self.tab_dir = root / "tables"
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        self.tab_dir.mkdir(parents=True, exist_ok=True)
        self.dpi = dpi

    def figure(self, name: str, fig: Figure) -> bytes:
        """Render ``fig`` to PNG, save it as ``figures/<name>.png`` and close it.

        Parameters
        ----------
        name : str
            The file's stem.
        fig : Figure
            The figure.

        Returns
        -------
        bytes
            The PNG bytes (to embed in the page).
        """
        png = figure_png(fig, dpi=self.dpi)
        (self.fig_dir / f"{name}.png").write_bytes(png)
        return png

    def table(self, name: str, table: pd.DataFrame) -> pd.DataFrame:
        """Save ``table`` as ``tables/<name>.csv`` and ``tables/<name>.json`` (records).

        Parameters
        ----------
        name : str
            The files' stem.
        table : DataFrame
            The table.

        Returns
        -------
        DataFrame
            ``table`` itself (to show in the page).
        """
        table.to_csv(self.tab_dir / f"{name}.csv", index=False)
        (self.tab_dir / f"{name}.json").write_text(table.to_json(orient="records", indent=2))
        return table
