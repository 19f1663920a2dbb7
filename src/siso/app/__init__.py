"""``siso app``: a local web page to learn a subject, watch it appear, stop it, and generate with it; to edit a photo
with it, or refine an image that already shows it.

`siso.app.studio` does the work (no web dependency), `siso.app.settings` holds its settings and limits,
`siso.app.uploads` checks what a page sends, `siso.app.edit` and `siso.app.refine` turn the Edit and Refine tabs'
requests into runs, `siso.app.ui` is the Gradio page (``pip install 'siso[app]'``), and `siso.cli.app` parses
``siso app`` and serves the page.
"""
