"""Input/output: NIfTI geometry, atomic writes, JSON with provenance, the raw dataset schema."""
