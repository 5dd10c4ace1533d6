"""One file per schema revision, applied in order; never edited once released."""
