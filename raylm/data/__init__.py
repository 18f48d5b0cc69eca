"""Data curation: readers, curation steps and the Ray Data pipeline that runs them."""
