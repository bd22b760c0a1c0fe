# Sphinx configuration of execnet's documentation site.
# Build: sphinx-build -W --keep-going -b html doc build/html
# Run the examples: sphinx-build -W -b doctest doc build/doctest
# Both import the installed package (pip install . first).

import os
import sys

# The functions the examples send with remote_exec() (doc/examples/).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples"))

project = "execnet"
author = "the execnet-in-C contributors"
copyright = "2026, " + author

try:
    import execnet

    release = execnet.__version__
except ImportError:  # the API reference then fails loudly under -W
    release = "unknown"
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]

# Markdown pages (MyST) and no other sources.
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "build", "examples", "Thumbs.db", ".DS_Store"]

# Headings become link targets, so that pages can point at sections.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# No network: no intersphinx, no remote images.
autodoc_member_order = "bysource"
# undoc-members: a public method without a docstring is listed all the same
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}

# The doctests start real interpreters: what a page leaves in the default
# group is terminated after the page.
doctest_global_setup = """
import execnet
"""
doctest_global_cleanup = """
execnet.default_group.terminate(timeout=10)
"""

html_theme = "alabaster"
html_title = f"execnet {release}"
