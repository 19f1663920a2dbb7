"""``siso app``: a local web page to learn a subject, watch it appear, stop it, and generate with it.

`siso.app.studio` does the work (no web dependency), `siso.app.uploads` checks what a page sends, `siso.app.ui` is
the Gradio page (``pip install 'siso[app]'``), and `siso.app.cli` parses ``siso app`` and serves the page.
"""
