"""Self-contained feature dashboards: an index page and one page that shows any feature.

The site works from ``file://`` with nothing fetched from the network: CSS and JS are inline in
the two HTML files, and data are JavaScript files loaded with ``<script>`` tags (browsers refuse
``fetch`` of ``file://`` URLs). ``data/index.js`` holds one short entry per feature;
``data/feature_N.js`` holds everything feature N's page shows, so a dictionary of 16k latents is
16k small files of which the browser loads one per page view.
"""

from .site import SiteWriter

__all__ = ["SiteWriter"]
