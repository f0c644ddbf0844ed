"""One reporting package for every command: what validate, bench, report and pipeline write for people and CI.

- :mod:`~ffnet_deploy.reporting.text`: user strings made safe for where they land: one line, CSV cells without
  spreadsheet formulas (OWASP), rich console text without markup.
- :mod:`~ffnet_deploy.reporting.markdown`: the one Markdown escaping and table helper (GitHub-flavoured), HTML in
  user strings escaped so that a Markdown viewer shows it as text.
- :mod:`~ffnet_deploy.reporting.document`: a report as a list of blocks (headings, paragraphs, bullets, tables,
  images, code), rendered to Markdown and, through :mod:`~ffnet_deploy.reporting.html`, to a self-contained HTML page
  (a jinja2 template with autoescaping).
- :mod:`~ffnet_deploy.reporting.junit`: the one JUnit XML writer (one ``<testsuite>`` per artifact or job, one
  ``<testcase>`` per gated check).
- :mod:`~ffnet_deploy.reporting.plots`: the one plot engine (matplotlib's Agg renderer without pyplot, user strings
  drawn as plain text, one PNG tag by which a later run recognises its own plots).

It sits just above the base layer: it knows files and text, never a model, an artifact or a result type, so every
command's writer can use it.
"""
