"""Pieces every stage uses: atomic writes, downloads, typed command options."""
