"""One-off studies behind the committed results in ``benchmarks/results/``: run from the repository root as
``python -m studies.<name>``. Not part of the installed package; the ``bench`` product imports none of them."""
