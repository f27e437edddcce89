"""Figures (matplotlib) and the self-contained HTML report.

Sub-modules:

- :mod:`.figures`: the Noise2Void figures (``fig_*``: arrays or tables in, a matplotlib
  figure out), the image stretch, and :func:`~.figures.figure_png`;
- :mod:`.html`: :class:`~.html.ReportSection`, :func:`~.html.render_html` (one HTML page,
  figures embedded) and :class:`~.html.ReportWriter` (figure and table files);
- :mod:`.gan`: the cGAN figures (pixel scatter, detections, stamps, losses);
- :mod:`.depth`: the detection-depth figures (completeness at equal purity, purity against
  threshold);
- :mod:`.injection`: the source-injection figures (bias and scatter per magnitude, colour
  bias, transfer function) and their report section;
- :mod:`.versions`: :func:`~.versions.software_versions`.

Only the pipeline decides where files go; nothing here imports it.
"""

from pausdenoise._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(__name__, {
    "GREY": "figures",
    "asinh_limits": "figures",
    "asinh_norm": "figures",
    "fig_completeness": "figures",
    "fig_df_histograms": "figures",
    "fig_flux_bias": "figures",
    "fig_loss": "figures",
    "fig_profile": "figures",
    "fig_residuals": "figures",
    "fig_sigma68": "figures",
    "fig_stamps": "figures",
    "fig_timings": "figures",
    "figure_png": "figures",
    "fig_detection_mags": "gan",
    "fig_gan_loss": "gan",
    "fig_gan_stamps": "gan",
    "fig_pixel_scatter": "gan",
    "depth_section": "depth",
    "fig_depth": "depth",
    "fig_colour_bias": "injection",
    "fig_injection_bias": "injection",
    "fig_injection_scatter": "injection",
    "fig_transfer": "injection",
    "injection_section": "injection",
    "ReportSection": "html",
    "ReportWriter": "html",
    "render_html": "html",
    "software_versions": "versions",
})
