"""``siso app``: a local web page to learn a subject, watch it appear, stop it, and generate with it.

`siso.app.studio` does the work (no web dependency), `siso.app.settings` holds its settings and limits,
`siso.app.uploads` checks what a page sends, `siso.app.ui` is the Gradio page (``pip install 'siso[app]'``), and
`siso.cli.app` parses ``siso app`` and serves the page.
"""
