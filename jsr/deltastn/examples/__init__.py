"""Proofs that jsr.deltastn is right: ``python -m jsr.deltastn.examples.ridge --json`` and ``... .digits``."""
